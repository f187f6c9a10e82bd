//! Importing streams its input: a large archive imports in memory that does not grow with it.

mod common;

use std::io::Write;
use std::process::Command;

#[test]
fn a_large_archive_imports_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("archive").join("data");
    std::fs::create_dir_all(&data).unwrap();
    let path = data.join("tweets.js");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    f.write_all(b"window.YTD.tweets.part0 = [").unwrap();
    // Shaped like a real archive entry: most of each entry is metadata, not text.
    let padding = "x".repeat(900);
    let target = 160 << 20;
    let (mut written, mut n) = (0usize, 0u64);
    while written < target {
        let entry = format!(
            "{}{{\n  \"tweet\" : {{\n    \"id_str\" : \"{n}\",\n    \"created_at\" : \"Sat Feb 18 12:33:11 +0000 2023\",\n    \"source\" : \"{padding}\",\n    \"full_text\" : \"tweet number {n} says hello to {} people\"\n  }}\n}}",
            if n == 0 { "" } else { "," },
            n * 7919 % 100_003
        );
        f.write_all(entry.as_bytes()).unwrap();
        written += entry.len();
        n += 1;
    }
    f.write_all(b"]").unwrap();
    drop(f);

    let home = tmp.path().join("home");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_aviary"))
            .args(args)
            .env("AVIARY_HOME", &home)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    run(&["bot", "new", "big"]);
    let out = run(&["import", "big", path.to_str().unwrap()]);
    let read = out
        .lines()
        .find(|l| l.trim_start().starts_with("read"))
        .expect("a read line");
    assert_eq!(
        read.split_whitespace().nth(1),
        Some(n.to_string().as_str()),
        "{out}"
    );
    let peak = common::children_peak_rss_mib();
    println!(
        "peak RSS importing a {} MiB archive of {n} tweets: {peak:.0} MiB",
        written >> 20
    );
    assert!(
        peak < 64.0,
        "peak RSS {peak:.0} MiB for a {} MiB archive",
        written >> 20
    );
}
