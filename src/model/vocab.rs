//! The character vocabulary: printable characters seen often enough in the corpus, plus an
//! unknown symbol and an end-of-tweet symbol. Stored in the checkpoint card as a string.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Id of the unknown-character symbol: any character outside the vocabulary maps here.
pub const UNK: u32 = 0;
/// Id of the end-of-tweet symbol: training text ends each tweet with it, sampling stops on it.
pub const EOT: u32 = 1;
/// Ids below this are symbols, not characters.
const FIRST_CHAR: u32 = 2;

/// Character <-> id mapping. Ids 0 and 1 are [`UNK`] and [`EOT`]; characters follow in
/// code-point order, so the same character counts give the same vocabulary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "VocabCard", into = "VocabCard")]
pub struct Vocab {
    chars: Vec<char>,
    ascii: [u32; 128],
    others: HashMap<char, u32>,
}

/// How a [`Vocab`] is written in a checkpoint card.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VocabCard {
    /// Every character of the vocabulary, in id order (ids start at 2).
    chars: String,
}

impl From<VocabCard> for Vocab {
    fn from(card: VocabCard) -> Self {
        Vocab::from_chars(card.chars.chars().collect())
    }
}

impl From<Vocab> for VocabCard {
    fn from(v: Vocab) -> Self {
        VocabCard {
            chars: v.chars.iter().collect(),
        }
    }
}

impl Vocab {
    /// The vocabulary of the printable characters counted at least `min_count` times.
    pub fn from_counts(counts: &HashMap<char, u64>, min_count: u64) -> Self {
        let mut chars: Vec<char> = counts
            .iter()
            .filter(|(c, n)| **n >= min_count.max(1) && !c.is_control())
            .map(|(c, _)| *c)
            .collect();
        chars.sort_unstable();
        Vocab::from_chars(chars)
    }

    /// The vocabulary of exactly these characters, in this order.
    pub fn from_chars(mut chars: Vec<char>) -> Self {
        let mut seen = std::collections::HashSet::new();
        chars.retain(|c| seen.insert(*c));
        let mut ascii = [UNK; 128];
        let mut others = HashMap::new();
        for (k, &c) in chars.iter().enumerate() {
            let id = k as u32 + FIRST_CHAR;
            if (c as u32) < 128 {
                ascii[c as usize] = id;
            } else {
                others.insert(c, id);
            }
        }
        Vocab {
            chars,
            ascii,
            others,
        }
    }

    /// Number of ids, symbols included: the model's input and output size.
    pub fn len(&self) -> usize {
        self.chars.len() + FIRST_CHAR as usize
    }

    /// True when the vocabulary has no characters (only the two symbols).
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The id of `c`, or [`UNK`].
    #[inline]
    pub fn id(&self, c: char) -> u32 {
        if (c as u32) < 128 {
            self.ascii[c as usize]
        } else {
            self.others.get(&c).copied().unwrap_or(UNK)
        }
    }

    /// Ids of every character of `text` (no end-of-tweet appended).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        text.chars().map(|c| self.id(c)).collect()
    }

    /// The character of `id`; `None` for the symbols and out-of-range ids.
    pub fn char(&self, id: u32) -> Option<char> {
        id.checked_sub(FIRST_CHAR)
            .and_then(|k| self.chars.get(k as usize).copied())
    }

    /// Characters of `text` outside the vocabulary, counted.
    pub fn unknown_count(&self, text: &str) -> usize {
        text.chars().filter(|&c| self.id(c) == UNK).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rare_and_control_characters_map_to_unknown() {
        let mut counts = HashMap::new();
        for (c, n) in [('a', 10), ('b', 3), ('é', 5), ('\t', 50), ('🐦', 1)] {
            counts.insert(c, n);
        }
        let v = Vocab::from_counts(&counts, 3);
        assert_eq!(v.len(), 2 + 3, "a, b, é plus two symbols");
        assert_eq!(v.encode("abé🐦\tz"), vec![2, 3, 4, UNK, UNK, UNK]);
        assert_eq!(v.char(4), Some('é'));
        assert_eq!(v.char(EOT), None);
        assert_eq!(v.unknown_count("a🐦z"), 2);
    }

    #[test]
    fn round_trips_through_json() {
        let v = Vocab::from_chars("hello wrd🐦".chars().collect());
        let json = serde_json::to_string(&v).unwrap();
        let back: Vocab = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v);
        assert_eq!(back.encode("hold 🐦"), v.encode("hold 🐦"));
    }
}
