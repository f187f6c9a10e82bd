//! The X/Twitter archive export, in every form a user has it: the zip itself, the unpacked
//! folder, or its `data/tweets.js`. Tweets sit in `data/tweets.js` (`window.YTD.tweets.part0 =
//! [...]`, JavaScript rather than JSON), large archives add `tweets-part1.js`…, archives of
//! 2019-2022 say `tweet.js` / `window.YTD.tweet.part0`, and pre-2019 ones keep monthly files
//! in `data/js/tweets/YYYY_MM.js` (`Grailbird.data.tweets_2015_04 = [...]`). The handle comes
//! from `data/account.js` (or the old `data/js/user_details.js`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{json, Format, SourceInfo, TweetSink};
use crate::{Error, Result};

/// Reads every tweet of the archive at `path` (zip, folder or `.js` file).
pub fn read(path: &Path, sink: &mut TweetSink) -> Result<SourceInfo> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return read_dir(path, sink);
    }
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|e| Error::io(path, e))?;
    if n == 4 && &magic == b"PK\x03\x04" {
        return read_zip(path, sink);
    }
    // A single .js file: its sibling parts belong to it.
    let name = file_name(path);
    let files = if is_main_tweets_file(&name) {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut parts = vec![path.to_path_buf()];
        parts.extend(part_files(dir, &name).into_iter().filter(|p| p != path));
        parts
    } else {
        vec![path.to_path_buf()]
    };
    let handle = match path.parent() {
        Some(d) => read_handle_in(d)?,
        None => None,
    };
    read_files(&files, handle, sink, path)
}

fn read_dir(dir: &Path, sink: &mut TweetSink) -> Result<SourceInfo> {
    let data = if dir.join("data").is_dir() {
        dir.join("data")
    } else {
        dir.to_path_buf()
    };
    let mut files = Vec::new();
    for main in ["tweets.js", "tweet.js"] {
        if data.join(main).is_file() {
            files.push(data.join(main));
        }
        files.extend(part_files(&data, main));
    }
    if files.is_empty() {
        let monthly = data.join("js").join("tweets");
        if let Ok(rd) = std::fs::read_dir(&monthly) {
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "js"))
                .collect();
            v.sort();
            files = v;
        }
    }
    if files.is_empty() {
        return Err(Error::corpus(
            dir,
            "is a folder without data/tweets.js (nor tweet.js or data/js/tweets/*.js)",
            "point at the unpacked X archive (the folder holding data/), its zip, or a tweets file",
        ));
    }
    let handle = read_handle_in(&data)?;
    read_files(&files, handle, sink, dir)
}

fn read_files(
    files: &[PathBuf],
    handle: Option<String>,
    sink: &mut TweetSink,
    origin: &Path,
) -> Result<SourceInfo> {
    let mut n = 0u64;
    for f in files {
        let file = std::fs::File::open(f).map_err(|e| Error::io(f, e))?;
        read_js(file, f, &f.display().to_string(), &mut |t| {
            n += 1;
            sink(t)
        })?;
    }
    super::require_some(origin, n)?;
    Ok(SourceInfo {
        format: Format::Archive,
        files: files.iter().map(|f| f.display().to_string()).collect(),
        handle,
    })
}

fn read_zip(path: &Path, sink: &mut TweetSink) -> Result<SourceInfo> {
    let bad_zip = |e: zip::result::ZipError| {
        Error::corpus(
            path,
            format!("is not a readable zip: {e}"),
            "download the archive again, or unpack it and import the folder",
        )
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(bad_zip)?;
    let names: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .collect();
    let mut tweets: Vec<(u32, String)> = names
        .iter()
        .filter_map(|n| {
            let (dir, file) = n.rsplit_once('/').unwrap_or(("", n));
            let in_data = dir == "data" || dir.ends_with("/data");
            let monthly = dir == "data/js/tweets" || dir.ends_with("/data/js/tweets");
            match (in_data, monthly, part_number(file)) {
                (true, _, Some(k)) => Some((k, n.clone())),
                (_, true, _) if file.ends_with(".js") => Some((0, n.clone())),
                _ => None,
            }
        })
        .collect();
    tweets.sort();
    if tweets.is_empty() {
        let some: Vec<&str> = names.iter().map(String::as_str).take(5).collect();
        return Err(Error::corpus(
            path,
            format!(
                "is a zip without data/tweets.js (it holds {} entries: {}{})",
                names.len(),
                some.join(", "),
                if names.len() > 5 { ", ..." } else { "" }
            ),
            "import the zip X sends with 'Download an archive of your data'",
        ));
    }
    let mut handle = None;
    if let Some(acct) = names
        .iter()
        .find(|n| n.ends_with("data/account.js") || n.ends_with("data/js/user_details.js"))
    {
        let mut text = String::new();
        let entry = format!("{}:{acct}", path.display());
        zip.by_name(acct)
            .map_err(bad_zip)?
            .read_to_string(&mut text)
            .map_err(|e| {
                Error::corpus(
                    Path::new(&entry),
                    format!("cannot be read: {e}"),
                    "download the archive again",
                )
            })?;
        handle = handle_from_js(&text, &entry)?;
    }
    let mut n = 0u64;
    let mut files = Vec::new();
    for (_, name) in &tweets {
        let entry = format!("{}:{name}", path.display());
        let reader = zip.by_name(name).map_err(bad_zip)?;
        read_js(reader, path, &entry, &mut |t| {
            n += 1;
            sink(t)
        })?;
        files.push(entry);
    }
    super::require_some(path, n)?;
    Ok(SourceInfo {
        format: Format::Archive,
        files,
        handle,
    })
}

/// Reads one archive `.js` file: its `NAME = ` prefix, then the JSON array of tweets.
fn read_js(reader: impl Read, path: &Path, name: &str, sink: &mut TweetSink) -> Result<()> {
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let mut prefix = Vec::new();
    (&mut reader)
        .take(256)
        .read_until(b'=', &mut prefix)
        .map_err(|e| Error::io(path, e))?;
    let prefix_text = String::from_utf8_lossy(super::trim_start(&prefix));
    if !(prefix.ends_with(b"=")
        && (prefix_text.starts_with("window.YTD.") || prefix_text.starts_with("Grailbird.data.")))
    {
        let shown: String = prefix_text.chars().take(40).collect();
        return Err(Error::corpus(
            Path::new(name),
            format!("line 1: expected `window.YTD.tweets.part0 = [` at the start, found `{shown}`"),
            "this is not an X archive's tweets file; pass --format to read it as another format",
        ));
    }
    json::read(reader, path, name, Format::Archive, sink)?;
    Ok(())
}

/// `tweets.js` is part 0, `tweets-part1.js` part 1, and so on; `None` for other files.
fn part_number(file: &str) -> Option<u32> {
    for main in ["tweets", "tweet"] {
        if let Some(rest) = file.strip_prefix(main) {
            if rest == ".js" {
                return Some(0);
            }
            if let Some(k) = rest
                .strip_prefix("-part")
                .and_then(|r| r.strip_suffix(".js"))
            {
                return k.parse().ok();
            }
        }
    }
    None
}

fn is_main_tweets_file(name: &str) -> bool {
    name == "tweets.js" || name == "tweet.js"
}

/// `main`'s part files (`tweets-part1.js`, ...) beside it in `dir`, in part order.
fn part_files(dir: &Path, main: &str) -> Vec<PathBuf> {
    let stem = main.trim_end_matches(".js");
    let mut parts: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let k = name
                .strip_prefix(stem)?
                .strip_prefix("-part")?
                .strip_suffix(".js")?
                .parse()
                .ok()?;
            Some((k, e.path()))
        })
        .collect();
    parts.sort();
    parts.into_iter().map(|(_, p)| p).collect()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The handle in `account.js` (or `js/user_details.js`) in the archive's data folder.
fn read_handle_in(data: &Path) -> Result<Option<String>> {
    for f in [
        data.join("account.js"),
        data.join("js").join("user_details.js"),
    ] {
        if f.is_file() {
            let text = std::fs::read_to_string(&f).map_err(|e| Error::io(&f, e))?;
            return handle_from_js(&text, &f.display().to_string());
        }
    }
    Ok(None)
}

fn handle_from_js(text: &str, name: &str) -> Result<Option<String>> {
    let json = text
        .split_once('=')
        .map(|(_, j)| j)
        .unwrap_or(text)
        .trim()
        .trim_end_matches(';');
    let v: Value = serde_json::from_str(json).map_err(|e| {
        Error::corpus(
            Path::new(name),
            format!("not valid JSON after its `=`: {e}"),
            "re-extract it from the archive zip",
        )
    })?;
    let handle = v
        .pointer("/0/account/username")
        .or_else(|| v.get("screen_name"))
        .and_then(Value::as_str);
    Ok(handle.map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_numbers() {
        assert_eq!(part_number("tweets.js"), Some(0));
        assert_eq!(part_number("tweet.js"), Some(0));
        assert_eq!(part_number("tweets-part12.js"), Some(12));
        assert_eq!(part_number("tweet-part1.js"), Some(1));
        assert_eq!(part_number("tweetdeck.js"), None);
        assert_eq!(part_number("account.js"), None);
    }

    #[test]
    fn handles_from_both_account_files() {
        let new = r#"window.YTD.account.part0 = [ { "account" : { "username" : "jack", "accountId" : "12" } } ]"#;
        assert_eq!(handle_from_js(new, "a").unwrap().as_deref(), Some("jack"));
        let old = r#"var user_details =  { "screen_name" : "james_a_forbes", "id" : "1" }"#;
        assert_eq!(
            handle_from_js(old, "a").unwrap().as_deref(),
            Some("james_a_forbes")
        );
        assert!(handle_from_js("window.x = [", "acct.js")
            .unwrap_err()
            .to_string()
            .contains("acct.js"));
    }
}
