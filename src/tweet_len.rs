//! How long X counts a tweet: its *weighted* length, by X's own rules (the `twitter-text`
//! crate, configuration v3): most Latin, Greek and Cyrillic characters count 1, most others
//! (CJK, most symbols) 2, an emoji 2 however many code points it has, and every link 23.
//! X refuses a tweet over 280.

/// The most X accepts.
pub const MAX_WEIGHTED: usize = 280;

/// X's weighted length of `text`.
pub fn weighted_len(text: &str) -> usize {
    let config = twitter_text_config::config_v3();
    twitter_text::parse(text, config, true)
        .weighted_length
        .max(0) as usize
}

/// What one character adds at most to the weighted length, for a running count while text is
/// written character by character (the sampler): 1 in X's light ranges, else 2. An emoji of
/// several code points counts 2 in all, so this count is never below the exact one.
pub fn char_weight(c: char) -> usize {
    let light = [(0, 4351), (8192, 8205), (8208, 8223), (8242, 8247)];
    let u = c as u32;
    if light.iter().any(|&(a, b)| (a..=b).contains(&u)) {
        1
    } else {
        2
    }
}

/// `text` trimmed, if X would take it: not empty, at most 280 by weight; else a message
/// saying how X counted it.
pub fn check(text: &str) -> std::result::Result<String, String> {
    let t = text.trim();
    let n = weighted_len(t);
    if t.is_empty() || n > MAX_WEIGHTED {
        return Err(format!(
            "X counts this tweet as {n} of {MAX_WEIGHTED} (emoji and CJK characters count 2, \
             a link 23)"
        ));
    }
    Ok(t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_counts_emoji_cjk_and_links_as_it_says() {
        assert_eq!(weighted_len("hello"), 5);
        assert_eq!(weighted_len("café"), 4);
        assert_eq!(weighted_len("東京"), 4, "CJK counts 2");
        assert_eq!(weighted_len("🚀"), 2, "an emoji counts 2");
        assert_eq!(
            weighted_len("👩‍👩‍👧"),
            2,
            "a family emoji too, five code points"
        );
        assert_eq!(
            weighted_len("see https://example.com/a/very/long/path/indeed"),
            4 + 23
        );
        // 280 emoji: 280 characters, 560 by X's count.
        let rockets = "🚀".repeat(280);
        assert_eq!(rockets.chars().count(), 280);
        assert_eq!(weighted_len(&rockets), 560);
        assert!(check(&rockets).unwrap_err().contains("560 of 280"));
        assert!(check(&"🚀".repeat(140)).is_ok());
        assert!(check(&"a".repeat(281)).is_err());
        assert!(check("   ").is_err());
    }

    #[test]
    fn the_running_count_is_never_below_the_exact_one() {
        for t in [
            "hello",
            "東京 tower",
            "🚀🚀 launch",
            "👩‍👩‍👧 family",
            "naïve — “quoted”",
        ] {
            let running: usize = t.chars().map(char_weight).sum();
            assert!(
                running >= weighted_len(t),
                "{t}: {running} < {}",
                weighted_len(t)
            );
        }
    }
}
