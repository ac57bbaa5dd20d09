//! `Subscribe` streams: `Subscribed`, then an `Event` frame for everything durable the
//! user may read, until the connection or the server ends.

use std::sync::atomic::Ordering;
use std::time::Duration;

use quinn::SendStream;
use rathaus_protocol::{Event, Response};
use tokio::sync::broadcast::error::RecvError;

use super::connection::ConnectionCtx;
use super::frame_io::{write_bytes, write_frame};
use super::ServerCtx;
use crate::service::{Broadcast, Session};

/// How long the last frame (`ShuttingDown`) may take to be acknowledged.
const LAST_FRAME_GRACE: Duration = Duration::from_secs(1);

/// How long a pushed frame may wait for the phone to take it. A subscriber that takes
/// nothing for this long has stopped reading: its subscription ends (the phone subscribes
/// again and fetches), so it no longer holds the frames published since
/// (`service::events::PushedFrames`).
const PUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes a shared frame within [`PUSH_TIMEOUT`]; whether it was written. Boxed by the
/// caller: the timer lives on the heap only while a frame is written, not in every
/// subscribed phone's task.
async fn push(send: &mut SendStream, frame: bytes::Bytes) -> bool {
    tokio::time::timeout(PUSH_TIMEOUT, write_bytes(send, frame))
        .await
        .unwrap_or(false)
}

/// Runs for as long as the phone stays subscribed, in its stream's task, which wakes only
/// for what this device may receive. The frames it encodes itself (`Subscribed`, the rare
/// `GroupsChanged` and `ShuttingDown`) are written from a box, so the task is sized for
/// the event loop and the shared frames' writes.
pub(crate) async fn run(ctx: &ConnectionCtx, session: Session, mut send: SendStream) {
    let service = &ctx.server.service;
    // Subscribe before answering so nothing published after `Subscribed` is missed. The
    // inbox gets only what this device may receive (see `service::subscriptions`).
    let mut events = service.subscribe(&session.user, session.device);
    let _count = Counted::new(&ctx.server);
    if !Box::pin(write_frame(&mut send, &Response::Subscribed)).await {
        return;
    }
    loop {
        let stopped = send.stopped();
        let event = tokio::select! {
            e = events.recv() => e,
            _ = stopped => return,
        };
        let ok = match event.as_deref() {
            Ok(Broadcast::Posted { frame, .. }) => {
                let taken = std::time::Instant::now();
                let ok = Box::pin(push(&mut send, frame.clone())).await;
                service
                    .metrics()
                    .fanout_seconds
                    .observe(taken.elapsed().as_secs_f64());
                ok
            }
            Ok(Broadcast::Direct { frame, .. } | Broadcast::Users { frame, .. }) => {
                Box::pin(push(&mut send, frame.clone())).await
            }
            Ok(Broadcast::GroupsChanged) => {
                Box::pin(write_frame(
                    &mut send,
                    &Response::Event(Event::GroupsChanged),
                ))
                .await
            }
            Ok(Broadcast::ShuttingDown) => {
                if Box::pin(write_frame(
                    &mut send,
                    &Response::Event(Event::ShuttingDown),
                ))
                .await
                {
                    let _ = send.finish();
                    let _ = tokio::time::timeout(LAST_FRAME_GRACE, send.stopped()).await;
                }
                return;
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(peer = %ctx.peer, missed, "subscriber lagged; asking it to re-fetch");
                Box::pin(write_frame(
                    &mut send,
                    &Response::Event(Event::GroupsChanged),
                ))
                .await
            }
            Err(RecvError::Closed) => {
                let _ = send.finish();
                return;
            }
        };
        if !ok {
            return;
        }
    }
}

/// Counts open subscriptions for the shutdown grace period.
struct Counted<'a>(&'a ServerCtx);

impl<'a> Counted<'a> {
    fn new(server: &'a ServerCtx) -> Self {
        server.subscribers.fetch_add(1, Ordering::SeqCst);
        Self(server)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::SeqCst);
    }
}
