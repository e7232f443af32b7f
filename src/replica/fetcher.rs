//! Staging a new version: reuse unchanged files from the live version, then
//! download the rest from the swarm.
//!
//! A file of the new version is reused when a file of the live version has
//! the same path, the same length, the same offset inside its first piece and
//! the same hashes for every piece that covers it: then its bytes are equal
//! (SHA-1 collisions aside), and the session's initial check re-hashes it
//! anyway. Piece-aligned torrents (the master's default) make every unchanged
//! file qualify. Reused files are hard-linked (copied if linking fails) into
//! `versions/<n>.partial/`, so they cost neither network nor much disk. A
//! link shares its bytes with the live version: if the check finds a piece
//! of it damaged, storage copies the file before writing the repair
//! (copy-on-write), so the live version is never written into.

use std::path::{Path, PathBuf};

use crate::metainfo::{FileEntry, Metainfo};

/// Is file `fa` of `a` byte-identical to file `fb` of `b`, judged by hashes?
fn same_file(
    a: &Metainfo,
    fa: &FileEntry,
    ia: usize,
    b: &Metainfo,
    fb: &FileEntry,
    ib: usize,
) -> bool {
    if fa.path != fb.path || fa.length != fb.length || a.piece_length != b.piece_length {
        return false;
    }
    if fa.length == 0 {
        return true;
    }
    if fa.offset % a.piece_length != fb.offset % b.piece_length {
        return false;
    }
    let (ra, rb) = (a.file_pieces(ia), b.file_pieces(ib));
    if ra.len() != rb.len() {
        return false;
    }
    // The first and last pieces may also hold neighbouring bytes; equal
    // hashes mean those are equal too, which is stricter than we need.
    ra.zip(rb)
        .all(|(pa, pb)| a.pieces[pa as usize] == b.pieces[pb as usize])
}

/// One reused file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reused {
    pub path: PathBuf,
    pub bytes: u64,
}

fn file_path(root: &Path, meta: &Metainfo, f: &FileEntry) -> PathBuf {
    if meta.single_file {
        root.join(&meta.name)
    } else {
        f.path.iter().fold(root.to_path_buf(), |p, c| p.join(c))
    }
}

/// Links (or copies) every reusable file of `live` (stored in `live_dir`)
/// into `staging`. Files already present in `staging` (a resumed download)
/// are left alone. Returns what was reused.
pub fn reuse_files(
    live: &Metainfo,
    live_dir: &Path,
    new: &Metainfo,
    staging: &Path,
) -> std::io::Result<Vec<Reused>> {
    let mut out = Vec::new();
    for (ib, fb) in new.files.iter().enumerate() {
        if fb.pad {
            continue;
        }
        let Some((ia, fa)) = live
            .files
            .iter()
            .enumerate()
            .find(|(_, f)| !f.pad && f.path == fb.path)
        else {
            continue;
        };
        if !same_file(live, fa, ia, new, fb, ib) {
            continue;
        }
        let src = file_path(live_dir, live, fa);
        let dst = file_path(staging, new, fb);
        if dst.exists() {
            // Already staged by an earlier, interrupted attempt.
            out.push(Reused {
                path: dst,
                bytes: fb.length,
            });
            continue;
        }
        let Ok(md) = std::fs::metadata(&src) else {
            continue;
        };
        if md.len() != fb.length {
            continue;
        }
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        crate::util::link_or_copy(&src, &dst)?;
        out.push(Reused {
            path: dst,
            bytes: fb.length,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::{build, BuildOptions};
    use std::sync::atomic::AtomicU64;

    fn torrent(dir: &Path, align: bool) -> Metainfo {
        let opts = BuildOptions {
            piece_length: Some(16384),
            align_files: align,
            ..Default::default()
        };
        build(dir, &opts, &AtomicU64::new(0)).unwrap().meta
    }

    #[test]
    fn reuses_exactly_the_unchanged_files_of_an_aligned_torrent() {
        let t = tempfile::tempdir().unwrap();
        let v1 = t.path().join("v1");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("_0.cfs"), vec![1u8; 50_000]).unwrap();
        std::fs::write(v1.join("_1.cfs"), vec![2u8; 30_000]).unwrap();
        std::fs::write(v1.join("segments_1"), b"v1").unwrap();
        let v2 = t.path().join("v2");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("_0.cfs"), vec![1u8; 50_000]).unwrap();
        std::fs::write(v2.join("_1.cfs"), vec![2u8; 30_000]).unwrap();
        std::fs::write(v2.join("_2.cfs"), vec![3u8; 20_000]).unwrap();
        std::fs::write(v2.join("segments_1"), b"v2").unwrap();
        let (m1, m2) = (torrent(&v1, true), torrent(&v2, true));

        let staging = t.path().join("staging");
        let reused = reuse_files(&m1, &v1, &m2, &staging).unwrap();
        let names: Vec<String> = reused
            .iter()
            .map(|r| r.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["_0.cfs", "_1.cfs"]);
        assert_eq!(reused.iter().map(|r| r.bytes).sum::<u64>(), 80_000);
        assert_eq!(
            std::fs::read(staging.join("_1.cfs")).unwrap(),
            vec![2u8; 30_000]
        );
        assert!(
            !staging.join("segments_1").exists(),
            "changed file is not reused"
        );
    }

    #[test]
    fn a_changed_byte_prevents_reuse() {
        let t = tempfile::tempdir().unwrap();
        let (v1, v2) = (t.path().join("a"), t.path().join("b"));
        for (d, b) in [(&v1, 0u8), (&v2, 1u8)] {
            std::fs::create_dir_all(d).unwrap();
            let mut data = vec![5u8; 40_000];
            data[39_999] = b;
            std::fs::write(d.join("f"), data).unwrap();
        }
        let reused = reuse_files(
            &torrent(&v1, true),
            &v1,
            &torrent(&v2, true),
            &t.path().join("s"),
        )
        .unwrap();
        assert!(reused.is_empty());
    }
}
