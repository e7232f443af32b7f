//! Process shutdown: Ctrl-C or SIGTERM cancels one token that every
//! long-running task watches. Tasks then finish their exit path (a `stopped`
//! announce, a final fsync) instead of being dropped mid-write.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first Ctrl-C / SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
