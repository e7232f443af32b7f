//! From a complete piece to a verdict: hash it off the runtime, write it,
//! then credit or blame. Blame follows the smart ban (`smartban.rs`): a
//! piece one peer sent alone convicts that peer; a piece several peers
//! filled is fetched again and judged block by block once it verifies.
//! When the last piece verifies, the files are fsynced before the session
//! calls itself complete.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use sha1::{Digest as _, Sha1};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::messages::VerifyJob;
use super::progress::{SessionFailure, SessionState};
use super::state::SwarmState;
use super::Session;
use crate::storage::StorageError;
use crate::swarm::bans::PeerIdent;
use crate::swarm::smartban::{block_digests, Digest};

impl SwarmState {
    /// Records a verdict on `piece`. Returns true when it was the last one.
    pub fn on_verdict(
        &mut self,
        piece: u32,
        ok: bool,
        buf: Vec<u8>,
        digests: Option<Vec<Digest>>,
        now: Instant,
    ) -> bool {
        let Some(picker) = self.picker.as_mut() else {
            return false;
        };
        let sources = picker.verified(piece, ok, buf);
        let idents: Vec<Option<PeerIdent>> = sources
            .iter()
            .map(|k| k.and_then(|k| self.ident_of(k)))
            .collect();
        if ok {
            self.on_piece_passed(piece, digests, now)
        } else {
            self.on_piece_failed(piece, &idents, digests, now);
            false
        }
    }

    fn on_piece_passed(&mut self, piece: u32, digests: Option<Vec<Digest>>, now: Instant) -> bool {
        self.last_progress = now;
        self.failures.passed(piece);
        if self.stalled.take().is_some() {
            info!("download is moving again");
        }
        self.stall_kind = None;
        if let Some(d) = digests.filter(|_| self.smartban.watching(piece)) {
            for who in self.smartban.on_passed(piece, &d) {
                self.ban(&who, &format!("sent a corrupt block of piece {piece}"), now);
            }
        }
        let have_msg = crate::peer::codec::Message::Have(piece);
        for p in self.peers.values_mut() {
            if p.has.get(piece) {
                p.interesting = p.interesting.saturating_sub(1);
            } else {
                p.send(crate::peer::connection::Outgoing::Msg(have_msg.clone()));
            }
        }
        // A finished piece frees a buffer: pipelines that stalled on the
        // active-piece limit can move again.
        let keys: Vec<_> = self.peers.keys().copied().collect();
        for k in keys {
            self.update_interest(k);
            self.refill(k, now);
        }
        self.picker.as_ref().is_some_and(|p| p.is_complete())
    }

    fn on_piece_failed(
        &mut self,
        piece: u32,
        idents: &[Option<PeerIdent>],
        digests: Option<Vec<Digest>>,
        now: Instant,
    ) {
        self.hash_failures += 1;
        let mut senders: Vec<PeerIdent> = Vec::new();
        for who in idents.iter().flatten() {
            if !senders.contains(who) {
                senders.push(*who);
            }
        }
        self.failures
            .record(piece, senders.iter().map(|w| w.listen.unwrap_or(w.addr)));
        warn!(piece, peers = senders.len(), "piece failed its hash check");
        if let [only] = senders.as_slice() {
            self.ban(
                only,
                &format!("sent piece {piece} that failed its hash check"),
                now,
            );
        } else if let Some(d) = digests {
            self.smartban.on_failed(piece, idents, &d);
        }
        self.refill_all(now);
    }

    /// Bans `who` for a while and closes its connections.
    pub fn ban(&mut self, who: &PeerIdent, why: &str, now: Instant) {
        let length = self.bans.ban(who, now);
        warn!(
            peer = %who.listen.unwrap_or(who.addr),
            secs = length.as_secs(),
            "banning peer: {why}"
        );
        let keys: Vec<_> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.peer_id == who.peer_id || (who.listen.is_some() && p.listen_addr == who.listen)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.close(k);
        }
    }
}

/// The SHA-1 of a piece of `piece_len` bytes held as `data`, its bytes up
/// to its trailing padding: the rest is hashed as the zeros it is.
pub(super) fn piece_digest(data: &[u8], piece_len: u64) -> [u8; 20] {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut h = Sha1::new();
    h.update(data);
    let mut pad = piece_len.saturating_sub(data.len() as u64);
    while pad > 0 {
        let n = pad.min(ZEROS.len() as u64);
        h.update(&ZEROS[..n as usize]);
        pad -= n;
    }
    h.finalize().into()
}

/// Hashes and (when it matches) writes a piece. Runs on a blocking thread.
fn check_and_write(
    storage: &crate::storage::Storage,
    expected: [u8; 20],
    job: &VerifyJob,
) -> (bool, Option<Vec<Digest>>, Result<(), StorageError>) {
    let ok = piece_digest(&job.data, storage.meta().piece_len(job.piece)) == expected;
    let digests = (!ok || job.watched).then(|| block_digests(&job.data));
    let written = if ok {
        storage.write_piece(job.piece, &job.data)
    } else {
        Ok(())
    };
    (ok, digests, written)
}

impl Session {
    pub(super) fn spawn_verify(self: &Arc<Self>, job: VerifyJob) {
        let s = self.clone();
        self.tasks.spawn(
            async move {
                let Ok(permit) = s.engine.hash_sem.clone().acquire_owned().await else {
                    return;
                };
                let storage = s.storage.clone();
                let expected = s.meta.pieces[job.piece as usize];
                let r = tokio::task::spawn_blocking(move || {
                    let out = check_and_write(&storage, expected, &job);
                    (job, out)
                })
                .await;
                drop(permit);
                match r {
                    Ok((job, (ok, digests, Ok(())))) => s.on_verified(job, ok, digests),
                    Ok((job, (_, _, Err(e)))) => s.fail(SessionFailure::Write {
                        piece: job.piece,
                        disk_full: e.is_disk_full(),
                        message: e.to_string(),
                    }),
                    Err(_) => s.fail(SessionFailure::Crashed("verifier")),
                }
            }
            .in_current_span(),
        );
    }

    fn on_verified(self: &Arc<Self>, job: VerifyJob, ok: bool, digests: Option<Vec<Digest>>) {
        let finished =
            self.state
                .lock()
                .on_verdict(job.piece, ok, job.data, digests, Instant::now());
        if finished && !self.finalizing.swap(true, Ordering::SeqCst) {
            self.spawn_finalize();
        } else {
            self.publish();
        }
    }

    /// Every piece verified: fsync, then call the download complete and
    /// drop peers that are seeds too.
    fn spawn_finalize(self: &Arc<Self>) {
        let s = self.clone();
        self.tasks.spawn(
            async move {
                let storage = s.storage.clone();
                match tokio::task::spawn_blocking(move || storage.finalize()).await {
                    Ok(Ok(())) => {
                        info!("download complete and synced to disk");
                        let seeds: Vec<CancellationToken> = {
                            let mut st = s.state.lock();
                            st.state = SessionState::Seeding;
                            st.stalled = None;
                            st.peers
                                .values()
                                .filter(|p| p.has.is_full())
                                .map(|p| p.kill.clone())
                                .collect()
                        };
                        seeds.iter().for_each(|k| k.cancel());
                        s.publish();
                    }
                    Ok(Err(e)) => s.fail(SessionFailure::Sync(e.to_string())),
                    Err(_) => s.fail(SessionFailure::Crashed("sync")),
                }
            }
            .in_current_span(),
        );
    }
}
