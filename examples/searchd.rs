//! A small search server built on tantivy, to run beside an indexswarm replica.
//!
//! ```sh
//! # master side: build index snapshots into the master's snapshots directory
//! cargo run --example searchd -- build --docs 5000 --out /srv/snapshots/snapshot.20261124120000000
//! cargo run --example searchd -- build --from /srv/snapshots/snapshot.20261124120000000 \
//!     --add "a document only in version two" --out /srv/snapshots/snapshot.20261124121500000
//!
//! # replica side: serve queries from the replica's `current`, reopen on swap
//! cargo run --example searchd -- serve --index /var/lib/indexswarm/replica/current --listen 127.0.0.1:8080
//! indexswarm replica --master-url http://master:7070 --data-dir /var/lib/indexswarm/replica \
//!     --on-swap http://127.0.0.1:8080/reload
//! curl '127.0.0.1:8080/search?q=only'
//! ```
//!
//! `build --from` copies the previous snapshot and commits one more document,
//! so the new snapshot shares every old segment file with the previous one,
//! as a real index does after a small commit; the replica then downloads
//! only the new segment and the new `meta.json`.
//!
//! `serve` loads the index into memory (a `RamDirectory`) instead of
//! opening it in place: tantivy would create lock files inside the replica's
//! version directory, which belongs to indexswarm and must stay exactly as
//! published.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use parking_lot::RwLock;
use tantivy::collector::TopDocs;
use tantivy::directory::RamDirectory;
use tantivy::query::QueryParser;
use tantivy::schema::{Schema, Value, STORED, STRING, TEXT};
use tantivy::{doc, Directory, Index, IndexWriter, TantivyDocument};
use warp::Filter;

#[derive(Parser)]
#[command(about = "A tantivy search server that reopens its index when indexswarm swaps it")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write an index snapshot directory (atomically: built aside, then renamed into place).
    Build {
        /// Where the snapshot appears.
        #[arg(long)]
        out: PathBuf,
        /// Generated documents in a fresh index.
        #[arg(long, default_value_t = 2000)]
        docs: usize,
        /// Start from this snapshot (copied) instead of a fresh index.
        #[arg(long)]
        from: Option<PathBuf>,
        /// Add one document with this text.
        #[arg(long)]
        add: Option<String>,
    },
    /// Serve GET /search?q=..., POST /reload and GET /info from an index directory.
    Serve {
        /// The index directory (e.g. the replica's `current` symlink; resolved at each reload).
        #[arg(long)]
        index: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

fn schema() -> Schema {
    let mut b = Schema::builder();
    b.add_text_field("id", STRING | STORED);
    b.add_text_field("body", TEXT | STORED);
    b.build()
}

const WORDS: &[&str] = &[
    "replica", "segment", "merge", "commit", "shard", "query", "token", "index", "swarm", "piece",
    "seed", "tracker", "latency", "search", "field", "score", "vector", "posting", "term",
    "document",
];

fn build(out: &Path, docs: usize, from: Option<&Path>, add: Option<&str>) -> Result<()> {
    if out.exists() {
        bail!("{} already exists", out.display());
    }
    let parent = out.parent().context("--out needs a parent directory")?;
    let name = out
        .file_name()
        .context("--out needs a name")?
        .to_string_lossy()
        .into_owned();
    // Built beside the snapshots directory's watch, then renamed in at once.
    let work = parent.join(format!(".{name}.building"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let index = match from {
        Some(prev) => {
            for e in std::fs::read_dir(prev)? {
                let e = e?;
                if e.file_type()?.is_file() {
                    std::fs::copy(e.path(), work.join(e.file_name()))?;
                }
            }
            Index::open_in_dir(&work)?
        }
        None => Index::create_in_dir(&work, schema())?,
    };
    let s = index.schema();
    let (id, body) = (s.get_field("id")?, s.get_field("body")?);
    let mut writer: IndexWriter = index.writer(50_000_000)?;
    if from.is_none() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for n in 0..docs {
            let mut text = String::new();
            for _ in 0..40 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                text.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
                text.push(' ');
            }
            writer.add_document(doc!(id => format!("doc-{n}"), body => text))?;
        }
    }
    if let Some(text) = add {
        writer.add_document(doc!(id => format!("added-{}", text.len()), body => text))?;
    }
    writer.commit()?;
    writer.wait_merging_threads()?;
    // Lock files are the writer's business, not the snapshot's.
    for lock in [".tantivy-writer.lock", ".tantivy-meta.lock"] {
        let _ = std::fs::remove_file(work.join(lock));
    }
    std::fs::rename(&work, out)?;
    println!("{}", out.display());
    Ok(())
}

/// Reads every file of `dir` into memory and opens it as an index.
fn load(dir: &Path) -> Result<(Index, PathBuf)> {
    let real = dir
        .canonicalize()
        .with_context(|| format!("{} does not exist yet", dir.display()))?;
    let ram = RamDirectory::create();
    for e in std::fs::read_dir(&real)? {
        let e = e?;
        if e.file_type()?.is_file() {
            let bytes = std::fs::read(e.path())?;
            ram.atomic_write(Path::new(&e.file_name()), &bytes)?;
        }
    }
    Ok((Index::open(ram)?, real))
}

struct Loaded {
    index: Index,
    reader: tantivy::IndexReader,
    path: PathBuf,
    generation: u64,
}

fn open(dir: &Path, generation: u64) -> Result<Loaded> {
    let (index, path) = load(dir)?;
    let reader = index.reader()?;
    Ok(Loaded {
        index,
        reader,
        path,
        generation,
    })
}

fn search(l: &Loaded, q: &str) -> Result<serde_json::Value> {
    let s = l.index.schema();
    let (id, body) = (s.get_field("id")?, s.get_field("body")?);
    let query = QueryParser::for_index(&l.index, vec![body]).parse_query(q)?;
    let searcher = l.reader.searcher();
    let top = searcher.search(&query, &TopDocs::with_limit(10))?;
    let hits: Vec<serde_json::Value> = top
        .into_iter()
        .filter_map(|(score, addr)| {
            let d: TantivyDocument = searcher.doc(addr).ok()?;
            let idv = d
                .get_first(id)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string();
            Some(serde_json::json!({"id": idv, "score": score}))
        })
        .collect();
    Ok(
        serde_json::json!({"query": q, "total": hits.len(), "hits": hits, "index": l.path, "generation": l.generation}),
    )
}

async fn serve(index_dir: PathBuf, listen: SocketAddr) -> Result<()> {
    let state: Arc<RwLock<Option<Loaded>>> = Arc::new(RwLock::new(open(&index_dir, 1).ok()));
    let st = warp::any().map({
        let s = state.clone();
        move || s.clone()
    });
    let search_route = warp::path!("search")
        .and(warp::get())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and(st.clone())
        .map(
            |q: std::collections::HashMap<String, String>, st: Arc<RwLock<Option<Loaded>>>| {
                let guard = st.read();
                let reply = match (guard.as_ref(), q.get("q")) {
                    (None, _) => serde_json::json!({"error": "no index loaded yet"}),
                    (_, None) => serde_json::json!({"error": "missing q"}),
                    (Some(l), Some(q)) => {
                        search(l, q).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}))
                    }
                };
                warp::reply::json(&reply)
            },
        );
    let dir = index_dir.clone();
    let reload = warp::path!("reload").and(warp::post()).and(st.clone()).map(
        move |st: Arc<RwLock<Option<Loaded>>>| {
            let generation = st.read().as_ref().map(|l| l.generation + 1).unwrap_or(1);
            let reply = match open(&dir, generation) {
                Ok(l) => {
                    let path = l.path.clone();
                    *st.write() = Some(l);
                    eprintln!("searchd: reopened {}", path.display());
                    serde_json::json!({"reloaded": path, "generation": generation})
                }
                Err(e) => serde_json::json!({"error": e.to_string()}),
            };
            warp::reply::json(&reply)
        },
    );
    let info =
        warp::path!("info")
            .and(warp::get())
            .and(st)
            .map(|st: Arc<RwLock<Option<Loaded>>>| {
                let g = st.read();
                warp::reply::json(&serde_json::json!({
                    "index": g.as_ref().map(|l| l.path.clone()),
                    "generation": g.as_ref().map(|l| l.generation),
                    "docs": g.as_ref().map(|l| l.reader.searcher().num_docs()),
                }))
            });
    eprintln!(
        "searchd: serving {} on http://{listen}",
        index_dir.display()
    );
    warp::serve(search_route.or(reload).or(info))
        .run(listen)
        .await;
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Build {
            out,
            docs,
            from,
            add,
        } => build(&out, docs, from.as_deref(), add.as_deref()),
        Cmd::Serve { index, listen } => serve(index, listen).await,
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
