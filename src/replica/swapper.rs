//! The swap: the only code that touches what the search server reads.
//!
//! `symlink` mode: `DATA/current` is a symlink to `versions/<n>`; a new
//! symlink is made as `current.tmp` and renamed over `current` (one
//! `rename(2)`, atomic), then `DATA` is fsynced so the rename survives a
//! crash. A reader sees the old version or the new one, never a mix.
//!
//! `solr` mode mirrors Solr's own replication: the version is placed as
//! `<core data dir>/index.<timestamp>` (hard links, so no copy), then
//! `index.properties` is replaced atomically to point at it, then the core is
//! reloaded through the core-admin API. A failed reload is reported, not
//! rolled back: the files on disk are already consistent and a later reload
//! (or restart) of Solr picks them up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::SolrConfig;
use crate::util::fs::write_atomic_traced;
use crate::util::{crash, link_or_copy, sync_dir};

#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SwapError + '_ {
    move |source| SwapError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The slot (`versions/<slot>`) `DATA/current` points at, if any.
pub fn read_current(data_dir: &Path) -> Option<String> {
    let target = std::fs::read_link(data_dir.join("current")).ok()?;
    let rest = target.strip_prefix("versions").ok()?;
    let name = rest.to_str()?;
    super::layout::slot_version(name).map(|_| name.to_string())
}

/// Points `DATA/current` at `versions/<slot>`, atomically and durably.
/// Crash points `symlink_tmp_created`, `current_renamed`, `current_dir_synced`.
pub fn swap_symlink(data_dir: &Path, slot: &str) -> Result<PathBuf, SwapError> {
    let tmp = data_dir.join("current.tmp");
    let _ = std::fs::remove_file(&tmp);
    let target = PathBuf::from("versions").join(slot);
    std::os::unix::fs::symlink(&target, &tmp).map_err(io(&tmp))?;
    crash::point("symlink_tmp_created");
    let current = data_dir.join("current");
    std::fs::rename(&tmp, &current).map_err(io(&current))?;
    crash::point("current_renamed");
    sync_dir(data_dir).map_err(io(data_dir))?;
    crash::point("current_dir_synced");
    Ok(data_dir.join(target))
}

/// Hard-links (or copies) every file of `src` into `dst`, recreating directories.
fn link_tree(src: &Path, dst: &Path) -> Result<(), SwapError> {
    for e in walkdir::WalkDir::new(src).follow_links(false) {
        let e = e.map_err(|e| SwapError::Io {
            path: src.to_path_buf(),
            source: e.into(),
        })?;
        let rel = e.path().strip_prefix(src).unwrap_or(Path::new(""));
        let target = dst.join(rel);
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&target).map_err(io(&target))?;
        } else if e.file_type().is_file() {
            link_or_copy(e.path(), &target).map_err(io(&target))?;
        }
    }
    Ok(())
}

/// Solr's timestamp format: yyyyMMddHHmmssSSS, UTC.
pub fn solr_timestamp_now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}{:03}",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The index directory `index.properties` names, if any.
pub fn solr_current_index(core_data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(core_data_dir.join("index.properties")).ok()?;
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| {
            l.split_once('=')
                .filter(|(k, _)| k.trim() == "index")
                .map(|(_, v)| v.trim().to_string())
        })
}

/// What a Solr swap did.
pub struct SolrSwap {
    pub index_dir: PathBuf,
    /// Set when the files were swapped but the core reload failed.
    pub reload_error: Option<String>,
}

pub async fn swap_solr(
    cfg: &SolrConfig,
    version_dir: &Path,
    http: &reqwest::Client,
) -> Result<SolrSwap, SwapError> {
    std::fs::create_dir_all(&cfg.core_data_dir).map_err(io(&cfg.core_data_dir))?;
    let name = format!("index.{}", solr_timestamp_now());
    let tmp = cfg.core_data_dir.join(format!("{name}.indexswarm-tmp"));
    let index_dir = cfg.core_data_dir.join(&name);
    let _ = std::fs::remove_dir_all(&tmp);
    link_tree(version_dir, &tmp)?;
    crash::point("solr_link_tree_done");
    // The entries inside must be durable before anything points at them.
    for e in walkdir::WalkDir::new(&tmp)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_dir())
    {
        sync_dir(e.path()).map_err(io(e.path()))?;
    }
    std::fs::rename(&tmp, &index_dir).map_err(io(&index_dir))?;
    crash::point("solr_index_renamed");
    sync_dir(&cfg.core_data_dir).map_err(io(&cfg.core_data_dir))?;
    crash::point("solr_core_dir_synced");
    let props = cfg.core_data_dir.join("index.properties");
    let body = format!("#index.properties written by indexswarm\nindex={name}\n");
    write_atomic_traced(&props, body.as_bytes(), Some("solr_properties")).map_err(io(&props))?;

    let url = format!(
        "{}{}action=RELOAD&core={}&wt=json",
        cfg.core_admin_url,
        if cfg.core_admin_url.contains('?') {
            '&'
        } else {
            '?'
        },
        percent_encoding::utf8_percent_encode(&cfg.core, percent_encoding::NON_ALPHANUMERIC)
    );
    let reload_error = match http.get(&url).timeout(Duration::from_secs(60)).send().await {
        Ok(r) if r.status().is_success() => None,
        Ok(r) => Some(format!("core RELOAD answered HTTP {}", r.status().as_u16())),
        Err(e) => Some(format!("core RELOAD failed: {e}")),
    };
    crash::point("solr_reload_done");
    Ok(SolrSwap {
        index_dir,
        reload_error,
    })
}

/// Why the `on_swap` hook failed (reported in `/status`, never fatal).
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("on_swap {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("on_swap {url}: {message}")]
    Request { url: String, message: String },
    #[error("on_swap command exited with {0}")]
    Exit(std::process::ExitStatus),
    #[error("on_swap command could not run: {0}")]
    Spawn(std::io::Error),
    #[error("on_swap command took longer than 60 s")]
    Timeout,
}

/// Runs the `on_swap` hook: an `http(s)://` URL gets a JSON POST, anything
/// else runs under `sh -c` with `INDEXSWARM_VERSION`, `INDEXSWARM_PATH` and
/// `INDEXSWARM_INFO_HASH` in its environment. A minute at most.
pub async fn run_hook(
    hook: &str,
    http: &reqwest::Client,
    version: u64,
    path: &Path,
    info_hash: &str,
) -> Result<(), HookError> {
    const LIMIT: Duration = Duration::from_secs(60);
    if hook.starts_with("http://") || hook.starts_with("https://") {
        let body = serde_json::json!({"version": version, "path": path, "info_hash": info_hash});
        return match http.post(hook).json(&body).timeout(LIMIT).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(HookError::Status {
                url: hook.to_string(),
                status: r.status().as_u16(),
            }),
            Err(e) => Err(HookError::Request {
                url: hook.to_string(),
                message: e.to_string(),
            }),
        };
    }
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(hook)
        .env("INDEXSWARM_VERSION", version.to_string())
        .env("INDEXSWARM_PATH", path)
        .env("INDEXSWARM_INFO_HASH", info_hash)
        .kill_on_drop(true);
    match tokio::time::timeout(LIMIT, cmd.status()).await {
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(HookError::Exit(s)),
        Ok(Err(e)) => Err(HookError::Spawn(e)),
        Err(_) => Err(HookError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_swap_replaces_current_atomically() {
        let d = tempfile::tempdir().unwrap();
        for v in [1, 2] {
            std::fs::create_dir_all(d.path().join(format!("versions/{v}"))).unwrap();
            std::fs::write(d.path().join(format!("versions/{v}/f")), format!("v{v}")).unwrap();
        }
        assert_eq!(read_current(d.path()), None);
        swap_symlink(d.path(), "1").unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("current/f")).unwrap(),
            "v1"
        );
        swap_symlink(d.path(), "2").unwrap();
        assert_eq!(read_current(d.path()).as_deref(), Some("2"));
        assert_eq!(
            std::fs::read_to_string(d.path().join("current/f")).unwrap(),
            "v2"
        );
        assert!(!d.path().join("current.tmp").exists());
    }

    #[test]
    fn solr_properties_are_parsed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("index.properties"),
            "#x\nindex=index.20261124133000123\n",
        )
        .unwrap();
        assert_eq!(
            solr_current_index(d.path()).as_deref(),
            Some("index.20261124133000123")
        );
        assert_eq!(solr_timestamp_now().len(), 17);
    }
}
