//! Words, for judging candidates by what a character model cannot see: whether its words are
//! words at all. One tokenizer (lower case; @mentions, #hashtags and numbers as classes, since
//! any of them is as good as another), the base corpus's word list built into the binary
//! (`checkpoints/base/words.txt`, written by `aviary base words`), and a set of known words:
//! that list plus an account's own.

use std::collections::HashSet;

/// A word of a tweet, as candidates are judged by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Word<'a> {
    /// Letters and digits (with inner apostrophes), lower-cased.
    Text(String),
    /// An @mention, a #hashtag or a number: always fine.
    Class(&'a str),
}

/// The words of `text`, in order. Links and other symbols are skipped.
pub fn words(text: &str) -> Vec<Word<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_alphanumeric() || c == '@' || c == '#') {
        let after = &rest[start..];
        let lead = after.chars().next().expect("found a character");
        let body = if lead == '@' || lead == '#' {
            &after[1..]
        } else {
            after
        };
        let len = word_len(body);
        // Past the word, or (nothing there: a lone `@` or `#`, or a letter-like symbol
        // `word_len` refuses) past its first character.
        let consumed = if len > 0 {
            (after.len() - body.len()) + len
        } else {
            lead.len_utf8()
        };
        let word = &body[..len];
        if !word.is_empty() {
            out.push(match lead {
                '@' => Word::Class("@"),
                '#' => Word::Class("#"),
                _ if word.chars().next().is_some_and(|c| c.is_ascii_digit()) => Word::Class("0"),
                _ => Word::Text(word.to_lowercase()),
            });
        }
        rest = &after[consumed..];
    }
    out
}

/// Bytes of the word at the start of `s`: letters, digits and `_`, and apostrophes between
/// letters ("don't", "Earth's").
fn word_len(s: &str) -> usize {
    let mut end = 0;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let inner_apostrophe = (c == '\'' || c == '’')
            && end > 0
            && chars.peek().is_some_and(|(_, n)| n.is_alphanumeric());
        if c.is_alphanumeric() || c == '_' || inner_apostrophe {
            end = i + c.len_utf8();
        } else {
            break;
        }
    }
    end
}

/// The base corpus's word list, built into the binary: one word a line, most frequent first.
pub const BASE_WORDS: &str = include_str!("../../checkpoints/base/words.txt");

/// Words known to be words: the base corpus's and an account's own.
pub struct KnownWords {
    base: HashSet<&'static str>,
    account: HashSet<String>,
}

impl KnownWords {
    /// The base corpus's words and every word of `tweets`.
    pub fn new<'a>(tweets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut account = HashSet::new();
        for t in tweets {
            for w in words(t) {
                if let Word::Text(w) = w {
                    account.insert(normalise_apostrophe(&w));
                }
            }
        }
        KnownWords {
            base: BASE_WORDS.lines().collect(),
            account,
        }
    }

    /// True for a class or a word of the base corpus or the account.
    pub fn knows(&self, w: &Word) -> bool {
        self.in_account(w) || self.in_base(w)
    }

    /// True for a class or a word of the account's tweets.
    pub fn in_account(&self, w: &Word) -> bool {
        match w {
            Word::Class(_) => true,
            Word::Text(t) => self.account.contains(&normalise_apostrophe(t)),
        }
    }

    /// True for a class or a word of the base corpus's list.
    pub fn in_base(&self, w: &Word) -> bool {
        match w {
            Word::Class(_) => true,
            Word::Text(t) => self.base.contains(normalise_apostrophe(t).as_str()),
        }
    }
}

/// "it’s" as "it's".
fn normalise_apostrophe(w: &str) -> String {
    w.replace('’', "'")
}

/// The word list of a corpus: words seen at least `min_count` times, most frequent first
/// (ties in alphabetical order), one a line; what `aviary base words` writes.
pub fn word_list<'a>(tweets: impl IntoIterator<Item = &'a str>, min_count: u64) -> String {
    let mut counts: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for t in tweets {
        for w in words(t) {
            if let Word::Text(w) = w {
                *counts.entry(normalise_apostrophe(&w)).or_default() += 1;
            }
        }
    }
    let mut list: Vec<(String, u64)> = counts
        .into_iter()
        .filter(|(_, n)| *n >= min_count)
        .collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    list.into_iter().map(|(w, _)| w + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lower_cased_and_classes_stand_for_their_kind() {
        let w = words("Hey @neiltyson, Earth's 4.5bn years & #Cosmos don’t lie: https://t.co/x");
        let t = |s: &str| Word::Text(s.to_string());
        assert_eq!(
            w,
            vec![
                t("hey"),
                Word::Class("@"),
                t("earth's"),
                Word::Class("0"),
                Word::Class("0"),
                t("years"),
                Word::Class("#"),
                t("don’t"),
                t("lie"),
                t("https"),
                t("t"),
                t("co"),
                t("x"),
            ]
        );
        assert!(words("  ...  ").is_empty());
        assert_eq!(words("#🐶 @ #x"), vec![Word::Class("#")]);
    }

    #[test]
    fn known_words_are_the_base_list_and_the_accounts() {
        let known = KnownWords::new(["Flux capacitors are real"]);
        for w in words("The universe is big, and flux capacitors don't exist") {
            assert!(known.knows(&w), "{w:?}");
        }
        let made_up = words("atmosthapper eniverse");
        assert!(made_up.iter().all(|w| !known.knows(w)), "{made_up:?}");
    }

    #[test]
    fn the_word_list_counts_and_orders() {
        let list = word_list(["a b b c", "b c", "it's it’s"], 2);
        assert_eq!(list, "b\nc\nit's\n");
    }
}
