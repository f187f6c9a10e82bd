//! Plain text files, one tweet per line: the training corpus format of `aviary train
//! --corpus`, and the simplest import format.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Plain text files, one tweet per line, read in the order given. Blank lines are skipped
/// and surrounding white space trimmed.
#[derive(Clone, Debug)]
pub struct PlainTextFiles {
    paths: Vec<PathBuf>,
}

impl PlainTextFiles {
    /// The files at `paths`; each must exist and be readable.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        if paths.is_empty() {
            return Err(Error::invalid(
                "no corpus file given",
                "pass --corpus FILE (one tweet per line)",
            ));
        }
        for p in paths {
            std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
        }
        Ok(PlainTextFiles {
            paths: paths.to_vec(),
        })
    }

    /// The files, as given.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Every tweet of every file, streamed: memory stays bounded by the longest line.
    pub fn tweets(&self) -> impl Iterator<Item = Result<String>> + '_ {
        self.paths.iter().flat_map(|p| FileLines::new(p))
    }
}

/// The non-blank lines of one file, or the first error (naming file and line).
pub(crate) struct FileLines {
    path: PathBuf,
    reader: Option<BufReader<std::fs::File>>,
    line: u64,
    buf: Vec<u8>,
    failed: Option<Error>,
}

impl FileLines {
    pub(crate) fn new(path: &Path) -> Self {
        let (reader, failed) = match std::fs::File::open(path) {
            Ok(f) => (Some(BufReader::with_capacity(1 << 16, f)), None),
            Err(e) => (None, Some(Error::io(path, e))),
        };
        FileLines {
            path: path.to_path_buf(),
            reader,
            line: 0,
            buf: Vec::new(),
            failed,
        }
    }
}

impl Iterator for FileLines {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        if let Some(e) = self.failed.take() {
            self.reader = None;
            return Some(Err(e));
        }
        let reader = self.reader.as_mut()?;
        loop {
            self.buf.clear();
            self.line += 1;
            match reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => {
                    self.reader = None;
                    return None;
                }
                Ok(_) => match std::str::from_utf8(&self.buf) {
                    Ok(s) => {
                        let t = s.trim();
                        if !t.is_empty() {
                            return Some(Ok(t.to_string()));
                        }
                    }
                    Err(e) => {
                        self.reader = None;
                        if let Some((problem, hint)) = super::not_text(&self.buf) {
                            return Some(Err(Error::corpus(&self.path, problem, hint)));
                        }
                        return Some(Err(Error::corpus(
                            &self.path,
                            format!(
                                "line {}: invalid UTF-8 at byte {} of the line",
                                self.line,
                                e.valid_up_to()
                            ),
                            "convert the file to UTF-8, e.g. `iconv -f WINDOWS-1252 -t UTF-8 FILE > FILE.utf8` (or -f MACINTOSH)",
                        )));
                    }
                },
                Err(e) => {
                    self.reader = None;
                    return Some(Err(Error::io(&self.path, e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lines_and_names_the_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.txt");
        std::fs::write(&good, "first tweet\n\n  second tweet  \r\nthird").unwrap();
        let files = PlainTextFiles::open(std::slice::from_ref(&good)).unwrap();
        let got: Vec<String> = files.tweets().map(|t| t.unwrap()).collect();
        assert_eq!(got, ["first tweet", "second tweet", "third"]);

        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, b"fine\nbro\xffken\n").unwrap();
        let files = PlainTextFiles::open(&[bad]).unwrap();
        let err = files.tweets().find_map(|t| t.err()).expect("an error");
        let msg = err.to_string();
        assert!(msg.contains("bad.txt") && msg.contains("line 2"), "{msg}");

        let missing = PlainTextFiles::open(&[dir.path().join("nope.txt")]).unwrap_err();
        assert!(missing.to_string().contains("nope.txt"), "{missing}");
    }
}
