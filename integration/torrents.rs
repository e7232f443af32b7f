//! Issue 2: torrents built and parsed alike by indexswarm, mktorrent and
//! libtorrent; unsafe torrents refused with a one-line error and exit 1.

use std::process::Command;

use crate::common::*;

fn inspect(torrent: &std::path::Path) -> serde_json::Value {
    let mut c = cmd();
    c.arg("inspect").arg(torrent);
    let out = run_ok(c);
    serde_json::from_slice(&out.stdout).expect("inspect prints JSON")
}

fn lt_info(torrent: &std::path::Path) -> serde_json::Value {
    let mut c = lt_peer();
    c.arg("info").arg(torrent);
    serde_json::from_slice(&run_ok(c).stdout).expect("lt_peer info prints JSON")
}

#[test]
fn mktorrent_and_libtorrent_torrents_inspect_with_their_info_hash() {
    need("mktorrent");
    need_libtorrent();
    let d = test_dir("mk");
    let src = d.path().join("snap");
    interop_tree(&src, 1);

    let mk = d.path().join("mk.torrent");
    let mut c = Command::new("mktorrent");
    c.args([
        "-a",
        "http://127.0.0.1:1/announce",
        "-l",
        "18",
        "-t",
        "2",
        "-o",
    ])
    .arg(&mk)
    .arg(&src);
    run_ok(c);
    let ours = inspect(&mk);
    let theirs = lt_info(&mk);
    assert_eq!(ours["info_hash"], theirs["info_hash"], "mktorrent torrent");
    assert_eq!(ours["pieces"], theirs["pieces"]);
    assert_eq!(ours["total_length"], theirs["total_length"]);
    assert_eq!(ours["announce"][0], "http://127.0.0.1:1/announce");

    for align in [false, true] {
        let lt = d.path().join(format!("lt-{align}.torrent"));
        let mut c = lt_peer();
        c.arg("make")
            .arg(&src)
            .arg(&lt)
            .args(["--piece-length", "65536"]);
        if align {
            c.arg("--align");
        }
        let reported = stdout_last_line(&run_ok(c));
        let ours = inspect(&lt);
        assert_eq!(
            ours["info_hash"],
            reported.as_str(),
            "libtorrent torrent (align {align})"
        );
        assert_eq!(ours["piece_length"], 65536);
    }
}

#[test]
fn created_torrents_load_and_verify_in_libtorrent() {
    need_libtorrent();
    let d = test_dir("create");
    let src = d.path().join("snap");
    interop_tree(&src, 2);
    for align in [false, true] {
        let t = d.path().join(format!("ours-{align}.torrent"));
        let mut c = cmd();
        c.arg("create")
            .arg(&src)
            .arg("-o")
            .arg(&t)
            .args(["--piece-length", "64K"]);
        if align {
            c.arg("--align-files");
        }
        let hash = stdout_last_line(&run_ok(c));
        assert_eq!(hash.len(), 40, "create prints the info-hash last");

        let ours = inspect(&t);
        let theirs = lt_info(&t);
        assert_eq!(
            theirs["info_hash"],
            hash.as_str(),
            "libtorrent sees our info-hash (align {align})"
        );
        assert_eq!(theirs["pieces"], ours["pieces"]);
        let our_files: Vec<(serde_json::Value, serde_json::Value)> = ours["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["path"].clone(), f["length"].clone()))
            .collect();
        // libtorrent prefixes the torrent name to multi-file paths.
        let their_files: Vec<(serde_json::Value, serde_json::Value)> = theirs["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let p: Vec<serde_json::Value> = f["path"].as_array().unwrap()[1..].to_vec();
                (serde_json::Value::Array(p), f["length"].clone())
            })
            .collect();
        assert_eq!(our_files, their_files, "same file list (align {align})");
        let pads = ours["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["pad"] == true)
            .count();
        assert_eq!(pads > 0, align, "padding files only with --align-files");

        let mut c = lt_peer();
        c.arg("check").arg(&t).arg(d.path());
        let check: serde_json::Value = serde_json::from_slice(&run_ok(c).stdout).unwrap();
        assert_eq!(check["checked"], true);
        assert_eq!(
            check["valid_pieces"], check["pieces"],
            "libtorrent finds every piece valid (align {align})"
        );
    }
}

#[test]
fn create_is_deterministic_and_single_file_works() {
    let d = test_dir("det");
    let src = d.path().join("snap");
    interop_tree(&src, 3);
    let hash = |out: &str| {
        let mut c = cmd();
        c.arg("create").arg(&src).arg("-o").arg(d.path().join(out));
        stdout_last_line(&run_ok(c))
    };
    assert_eq!(hash("a.torrent"), hash("b.torrent"));

    let file = src.join("_0.cfs");
    let mut c = cmd();
    c.arg("create")
        .arg(&file)
        .arg("-o")
        .arg(d.path().join("one.torrent"));
    run_ok(c);
    let j = inspect(&d.path().join("one.torrent"));
    assert_eq!(j["name"], "_0.cfs");
    assert_eq!(j["files"].as_array().unwrap().len(), 1);
    assert_eq!(j["total_length"], 3_000_000);
}

/// A bencoded torrent with the given file paths, for the refusal tests.
fn torrent_with_paths(paths: &[&[&str]], name: &str) -> Vec<u8> {
    let mut files = String::new();
    for p in paths {
        let comps: String = p.iter().map(|c| format!("{}:{}", c.len(), c)).collect();
        files.push_str(&format!("d6:lengthi10e4:pathl{comps}ee"));
    }
    let n = paths.len() * 10;
    let pieces = n.div_ceil(16384);
    let mut out = format!(
        "d4:infod5:filesl{files}e4:name{}:{name}12:piece lengthi16384e6:pieces{}:",
        name.len(),
        pieces * 20
    )
    .into_bytes();
    out.extend(std::iter::repeat_n(0u8, pieces * 20));
    out.extend_from_slice(b"ee");
    out
}

#[test]
fn inspect_refuses_unsafe_and_malformed_torrents_with_one_line_and_exit_1() {
    let d = test_dir("bad");
    let good = torrent_with_paths(&[&["a"]], "x");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            torrent_with_paths(&[&["..", "etc", "passwd"]], "x"),
            "unsafe path",
        ),
        (
            "absolute",
            torrent_with_paths(&[&["/etc"]], "x"),
            "unsafe path",
        ),
        (
            "bad-name",
            torrent_with_paths(&[&["a"]], ".."),
            "unsafe path",
        ),
        (
            "duplicate",
            torrent_with_paths(&[&["a"], &["a"]], "x"),
            "twice",
        ),
        ("truncated", good[..good.len() / 2].to_vec(), "bencode"),
        ("garbage", b"this is not a torrent".to_vec(), "bencode"),
        ("empty", Vec::new(), "bencode"),
    ];
    for (name, bytes, needle) in cases {
        let p = d.path().join(format!("{name}.torrent"));
        std::fs::write(&p, bytes).unwrap();
        let mut c = cmd();
        c.arg("inspect").arg(&p);
        let out = run(c);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: exit 1, stderr: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{name}: one line, got {err:?}"
        );
        assert!(
            err.contains(needle),
            "{name}: {err:?} should mention {needle:?}"
        );
        assert!(!err.contains("panicked"), "{name} panicked");
        assert!(out.stdout.is_empty(), "{name}: nothing on stdout");
    }
    // The good one still inspects.
    let p = d.path().join("good.torrent");
    std::fs::write(&p, good).unwrap();
    assert_eq!(inspect(&p)["files"][0]["path"][0], "a");
}

#[test]
fn usage_errors_exit_2_and_help_explains() {
    let mut c = cmd();
    c.args(["create"]);
    assert_eq!(run(c).status.code(), Some(2));
    let mut c = cmd();
    c.args([
        "fetch",
        "x.torrent",
        "--download-limit",
        "fast",
        "--dir",
        ".",
    ]);
    assert_eq!(run(c).status.code(), Some(2));
    for sub in ["create", "inspect", "tracker", "seed", "fetch"] {
        let mut c = cmd();
        c.args([sub, "--help"]);
        let out = run_ok(c);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{sub} --help"
        );
    }
}
