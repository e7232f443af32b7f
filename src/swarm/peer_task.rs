//! Drives one connection: spawns the writer half, reads frames with an idle
//! timeout, applies the download rate limit, and hands each message to the
//! session. Any error ends the connection and is logged with its reason.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use super::picker::PeerKey;
use super::session::Session;
use crate::peer::codec::{Message, PeerCodec};
use crate::peer::connection::{
    run_writer, throttle, Connected, Outgoing, WriterCounters, IDLE_TIMEOUT,
};

/// Read buffer per connection: room for many 16 KiB blocks per syscall.
const READ_BUFFER: usize = 256 * 1024;

pub(crate) async fn run(
    session: Arc<Session>,
    key: PeerKey,
    conn: Connected,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    counters: Arc<WriterCounters>,
    kill: CancellationToken,
) {
    let (r, w) = conn.stream.split();
    let (storage, up_limiters, uploaded) = session.writer_inputs();
    let writer_kill = kill.clone();
    let mut writer = tokio::spawn(
        async move {
            let stop = writer_kill.clone();
            if let Err(e) = run_writer(w, rx, storage, up_limiters, counters, uploaded, stop).await
            {
                debug!("write side closed: {e}");
            }
            writer_kill.cancel();
        }
        .in_current_span(),
    );
    let mut frames =
        FramedRead::with_capacity(r, PeerCodec::new(session.meta().num_pieces()), READ_BUFFER);
    let reason = loop {
        let next = tokio::select! {
            _ = kill.cancelled() => break "closed".to_string(),
            n = tokio::time::timeout(IDLE_TIMEOUT, frames.next()) => n,
        };
        let msg = match next {
            Err(_) => break format!("idle for {}s", IDLE_TIMEOUT.as_secs()),
            Ok(None) => break "peer closed the connection".to_string(),
            Ok(Some(Err(e))) => break format!("protocol error: {e}"),
            Ok(Some(Ok(m))) => {
                if !matches!(m, Message::Piece { .. } | Message::Request(_)) {
                    tracing::trace!(?m, "received");
                }
                m
            }
        };
        if let Message::Piece { data, .. } = &msg {
            let limiters = session.down_limiters();
            if !limiters.is_empty() {
                throttle(limiters, data.len() as u32).await;
            }
        }
        if let Err(e) = session.on_message(key, msg) {
            break e.to_string();
        }
    };
    session.remove_peer(key, &reason);
    // Stops the writer too (it drops what is still queued).
    kill.cancel();
    if tokio::time::timeout(std::time::Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}
