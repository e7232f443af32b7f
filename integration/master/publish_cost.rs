//! Issue #8, part 2: publishing costs what changed. A snapshot whose
//! unchanged files are hard links of a published version's (as Solr's
//! snapshots and `cp -al` make them) reuses their piece hashes: only the
//! new and the edited files are read. The torrent is the one a full
//! rehash gives (`indexswarm create` on the same directory), so reuse
//! can never publish a wrong hash; a file that was only copied, or whose
//! link was edited, is hashed again.

use std::fs;

use super::*;

/// `cp -al src dst`: the same files, as hard links.
fn link_tree(src: &Path, dst: &Path) {
    for entry in walkdir::WalkDir::new(src).min_depth(1) {
        let entry = entry.unwrap();
        let to = dst.join(entry.path().strip_prefix(src).unwrap());
        if entry.file_type().is_dir() {
            fs::create_dir_all(&to).unwrap();
        } else {
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::hard_link(entry.path(), &to).unwrap();
        }
    }
}

/// The info-hash `indexswarm create` computes for `dir`, hashing every byte.
fn full_rehash(dir: &Path, name: &str) -> String {
    let out = run_ok({
        let mut c = cmd();
        c.arg("create").arg(dir).args([
            "--align-files",
            "--piece-length",
            "16K",
            "--name",
            name,
            "-o",
        ]);
        c.arg(dir.with_extension("torrent"));
        c
    });
    stdout_last_line(&out)
}

#[test]
fn hard_linked_files_are_not_hashed_again_and_the_torrent_is_the_same() {
    let d = test_dir("m-publish-cost");
    let mut m = start_master(
        "master",
        d.path(),
        &["--settle-secs", "1", "--piece-length", "16K"],
    );
    let staging = d.path().join("staging");
    small_snapshot(&staging.join("v1"), 1);
    fs::rename(staging.join("v1"), m.snaps.join("v1")).unwrap();
    m.wait_published("v1");
    let first = m.status()["last_publish"].clone();
    assert_eq!(first["reused_bytes"], 0, "nothing to reuse yet: {first}");

    // v2: v1 hard-linked, plus one new segment file.
    link_tree(&m.snaps.join("v1"), &staging.join("v2"));
    write_tree(&staging.join("v2"), &[("_2.cfs", 40_000)], 9);
    fs::rename(staging.join("v2"), m.snaps.join("v2")).unwrap();
    let v2 = m.wait_published("v2");
    let cost = m.status()["last_publish"].clone();
    assert_eq!(cost["version"], v2["version"], "{cost}");
    // Padded to whole pieces, but the last file, which ends the torrent.
    let linked: u64 = [200u64, 301_000, 400]
        .iter()
        .map(|n| n.div_ceil(16384) * 16384)
        .sum::<u64>()
        + 50_000;
    assert_eq!(
        cost["reused_bytes"], linked,
        "every linked file's pieces are reused: {cost}"
    );
    assert_eq!(
        cost["hashed_bytes"],
        40_000_u64.div_ceil(16384) * 16384,
        "only the new file is read: {cost}"
    );
    assert_eq!(
        v2["info_hash"].as_str().unwrap(),
        full_rehash(&m.snaps.join("v2"), "v2"),
        "reuse gives the torrent a full rehash gives"
    );
    assert!(m.metric("indexswarm_publish_reused_bytes_total") >= Some(linked as f64));

    // v3: linked again, but one link edited in place (a new mtime), and one
    // file a copy rather than a link: both are hashed, not reused.
    link_tree(&m.snaps.join("v2"), &staging.join("v3"));
    let v3 = staging.join("v3");
    fs::remove_file(v3.join("_0.si")).unwrap();
    fs::write(
        v3.join("_0.si"),
        fs::read(m.snaps.join("v2/_0.si")).unwrap(),
    )
    .unwrap();
    let edited = v3.join("sub/_1.fdt");
    fs::remove_file(&edited).unwrap();
    let mut bytes = fs::read(m.snaps.join("v2/sub/_1.fdt")).unwrap();
    bytes[7] ^= 0xff;
    fs::write(&edited, &bytes).unwrap();
    fs::rename(&v3, m.snaps.join("v3")).unwrap();
    let v3 = m.wait_published("v3");
    let cost = m.status()["last_publish"].clone();
    let copied_and_edited = 16384 + 50_000;
    assert_eq!(
        cost["hashed_bytes"], copied_and_edited,
        "the copy and the edit are read, the rest reused: {cost}"
    );
    assert_eq!(
        v3["info_hash"].as_str().unwrap(),
        full_rehash(&m.snaps.join("v3"), "v3")
    );
}
