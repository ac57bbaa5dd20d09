//! One task per bidirectional stream: read one request, answer it, finish.
//!
//! A stream that sends garbage gets a typed error and is closed; the connection and its
//! other streams carry on. Before the connection has authenticated, a stream's frame may
//! be at most [`PRE_AUTH_FRAME`] bytes and carry only what a stranger may send.

use std::sync::Arc;
use std::time::Duration;

use quinn::{RecvStream, SendStream};
use rathaus_protocol::limits::MAX_CONTROL_FRAME;
use rathaus_protocol::{ErrorCode, Request, Response, AUTH_EXPORTER_LABEL};

use super::admission::{self, allowed_before_auth, PRE_AUTH_FRAME};
use super::connection::ConnectionCtx;
use super::frame_io::{write_chunk_response, write_frame, FrameReader, ReadFailure};
use super::subscribe;
use crate::service::refused::SessionRefused;
use crate::service::{NewDevice, Refusal, Session};

/// How long a peer may take to send its request (and its proof, after a challenge).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the answer to a last failed proof may take to arrive before the connection
/// is closed.
const LAST_ANSWER_GRACE: Duration = Duration::from_secs(1);

/// Application error code for streams the server stops reading.
const STOP_DONE: u32 = 0;

/// A subscription stream lives as long as the phone stays connected, in a task sized for
/// the largest state this function reaches; so everything before a subscription's event
/// loop (reading the request, answering every other kind: the service's dispatch, KiBs of
/// state) is boxed and lives on the heap only while it is worked on, and a subscribed
/// phone's stream task holds the event loop and little else.
pub(crate) async fn serve(ctx: Arc<ConnectionCtx>, send: SendStream, recv: RecvStream) {
    if let Some((session, send)) = Box::pin(first_request(&ctx, send, recv)).await {
        subscribe::run(&ctx, session, send).await;
    }
}

/// Reads the stream's request and answers it; for a subscription, hands back its session
/// and sending half, having let go of the receiving half (the phone sends nothing more;
/// where it finished its side, quinn keeps that state for the connection's next stream)
/// and the request's buffer and budget.
async fn first_request(
    ctx: &Arc<ConnectionCtx>,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Option<(Session, SendStream)> {
    // A stranger's stream reads within the strangers' budget (and limit) even once its
    // connection authenticates, so strangers never hold what colleagues' requests need.
    // A colleague's stream reads within their share too, so that one colleague's many
    // connections and streams never hold what the others' requests need.
    let share = ctx.user_share();
    let (limit, budget) = match share {
        Some(_) => (MAX_CONTROL_FRAME, &ctx.server.budget),
        None => (PRE_AUTH_FRAME, &ctx.server.prelogin_budget),
    };
    // Holds the request's bytes against the budget until the stream is done.
    let mut reader = FrameReader::new(limit, budget.clone(), share);
    let request = read_request(ctx, &mut reader, &mut send, &mut recv).await?;
    if let (Request::Subscribe, Some(session)) = (&request, ctx.session()) {
        tracing::debug!(peer = %ctx.peer, request = "Subscribe", "request");
        return Some((session, send));
    }
    Box::pin(answer(ctx, &mut reader, send, recv, request)).await;
    None
}

/// Answers `request`, read from the stream `send`/`recv` through `reader`, and finishes
/// the stream.
async fn answer(
    ctx: &Arc<ConnectionCtx>,
    reader: &mut FrameReader,
    mut send: SendStream,
    mut recv: RecvStream,
    request: Request,
) {
    let kind = request_kind(&request);
    if !ctx.is_authenticated() && !allowed_before_auth(&request) {
        refused_frame(ctx, kind, "not allowed before authentication");
        ctx.server
            .service
            .count_prelogin_request(kind, &Err(unauthenticated()));
        reject(&mut send, &mut recv, unauthenticated().to_response()).await;
        return;
    }
    tracing::debug!(peer = %ctx.peer, request = kind, "request");
    let service = &ctx.server.service;
    // Requests inside a session are counted by the service; the others here.
    let mut in_session = false;
    let answer = match request {
        Request::Ping => Ok(Response::Pong),
        Request::Enroll {
            protocol,
            user,
            code,
            password,
            device_key,
            device_name,
        } => {
            let device = NewDevice {
                user,
                password,
                device_key,
                device_name,
            };
            Box::pin(service.enroll(ctx.peer_ip(), protocol, &code, device)).await
        }
        Request::AddDevice {
            protocol,
            user,
            password,
            device_key,
            device_name,
        } => {
            let device = NewDevice {
                user,
                password,
                device_key,
                device_name,
            };
            Box::pin(service.add_device(ctx.peer_ip(), protocol, device)).await
        }
        Request::Hello {
            protocol,
            user,
            device,
        } => {
            if ctx.session().is_some() {
                Err(SessionRefused::AlreadyAuthenticated.into())
            } else {
                Box::pin(authenticate(
                    ctx, reader, &mut send, &mut recv, protocol, user, device,
                ))
                .await
            }
        }
        Request::Prove { .. } => Err(SessionRefused::HelloFirst.into()),
        Request::Subscribe => match ctx.session() {
            Some(session) => {
                // Authenticated on another stream since `first_request` looked.
                subscribe::run(ctx, session, send).await;
                return;
            }
            None => Err(unauthenticated()),
        },
        other => match ctx.session() {
            Some(session) => {
                in_session = true;
                Box::pin(service.handle_cached(&session, &ctx.user_cache, other)).await
            }
            None => Err(unauthenticated()),
        },
    };
    if !in_session {
        service.count_prelogin_request(kind, &answer);
    }
    let response = match answer {
        Ok(r) => r,
        Err(refusal) => {
            log_refusal(ctx, kind, &refusal);
            refusal.to_response()
        }
    };
    let written = match response {
        Response::Chunk { bytes } => write_chunk_response(&mut send, bytes).await,
        other => write_frame(&mut send, &other).await,
    };
    if written {
        let _ = send.finish();
        if kind == "Hello" && !ctx.is_authenticated() {
            // Let the refusal arrive before a connection that keeps failing is closed.
            let _ = tokio::time::timeout(LAST_ANSWER_GRACE, send.stopped()).await;
            ctx.close_if_failing_proofs();
        }
    }
}

/// Reads the stream's request; answers and closes the stream itself if it is bad.
async fn read_request(
    ctx: &ConnectionCtx,
    reader: &mut FrameReader,
    send: &mut SendStream,
    recv: &mut RecvStream,
) -> Option<Request> {
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read::<Request>(recv)).await {
        Ok(Ok(Some(request))) => Some(request),
        Ok(Ok(None)) => {
            let _ = send.finish();
            None
        }
        Ok(Err(ReadFailure::Protocol(e))) => {
            refused_frame(ctx, "frame", &e.to_string());
            reject(send, recv, Response::error(e.code(), e.to_string())).await;
            None
        }
        Ok(Err(ReadFailure::OverBudget)) => {
            reject(send, recv, over_budget()).await;
            None
        }
        Ok(Err(ReadFailure::Stream(e))) => {
            tracing::debug!(peer = %ctx.peer, error = %e, "stream broke before its request");
            None
        }
        Err(_) => {
            let timeout = Response::error(ErrorCode::Invalid, "timed out waiting for the request");
            reject(send, recv, timeout).await;
            None
        }
    }
}

/// Counts and (thinned out) logs a frame the server refused.
fn refused_frame(ctx: &ConnectionCtx, kind: &str, why: &str) {
    let n = admission::count(&ctx.server.counters.refused_frames);
    if admission::worth_logging(n) {
        tracing::warn!(
            peer = %ctx.peer,
            request = kind,
            authenticated = ctx.is_authenticated(),
            refused = n,
            reason = why,
            "refused a frame"
        );
    }
}

fn over_budget() -> Response {
    Response::error(
        ErrorCode::Unavailable,
        "the server is receiving too many requests at once; try again in a moment",
    )
}

/// Answers with an error, stops reading and finishes the stream.
async fn reject(send: &mut SendStream, recv: &mut RecvStream, response: Response) {
    let _ = recv.stop(quinn::VarInt::from_u32(STOP_DONE));
    if write_frame(send, &response).await {
        let _ = send.finish();
    }
}

/// `Hello` → `Challenge` → `Prove` → `Authenticated`, all on this stream.
async fn authenticate(
    ctx: &ConnectionCtx,
    reader: &mut FrameReader,
    send: &mut SendStream,
    recv: &mut RecvStream,
    protocol: u16,
    user: rathaus_protocol::UserId,
    device: rathaus_protocol::DeviceId,
) -> Result<Response, Refusal> {
    let service = &ctx.server.service;
    let pending = service.challenge(ctx.peer_ip(), protocol, user, device)?;
    let challenge = Response::Challenge {
        protocol: rathaus_protocol::PROTOCOL_VERSION,
        nonce: pending.nonce,
    };
    if !write_frame(send, &challenge).await {
        return Err(SessionRefused::StreamClosed.into());
    }
    let signature = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read::<Request>(recv)).await
    {
        Ok(Ok(Some(Request::Prove { signature }))) => signature,
        Ok(Ok(Some(_))) => return Err(SessionRefused::ExpectedProve.into()),
        Ok(Ok(None)) => return Err(SessionRefused::EndedBeforeProve.into()),
        Ok(Err(ReadFailure::Protocol(e))) => {
            refused_frame(ctx, "Prove", &e.to_string());
            return Err(Refusal::frame(&e));
        }
        Ok(Err(ReadFailure::OverBudget)) => return Err(SessionRefused::Busy.into()),
        Ok(Err(ReadFailure::Stream(e))) => {
            return Err(SessionRefused::StreamBroke(e.to_string()).into())
        }
        Err(_) => return Err(SessionRefused::ProveTimeout.into()),
    };
    let mut exporter = [0u8; 32];
    ctx.conn
        .export_keying_material(&mut exporter, AUTH_EXPORTER_LABEL, b"")
        .map_err(|e| Refusal::internal(format!("TLS exporter: {e:?}")))?;
    let (session, info) = service
        .prove(ctx.peer_ip(), &pending, &exporter, &signature)
        .inspect_err(|_| ctx.proof_failed())?;
    tracing::info!(peer = %ctx.peer, user = %session.user, device = %session.device, "authenticated");
    ctx.authenticate(session);
    Ok(Response::Authenticated(info))
}

fn unauthenticated() -> Refusal {
    SessionRefused::Unauthenticated.into()
}

fn log_refusal(ctx: &ConnectionCtx, kind: &str, refusal: &Refusal) {
    match &refusal.detail {
        Some(detail) => {
            tracing::error!(peer = %ctx.peer, request = kind, detail = %detail, "internal error")
        }
        None => tracing::debug!(
            peer = %ctx.peer,
            request = kind,
            code = %refusal.code(),
            message = %refusal.message(),
            "refused"
        ),
    }
}

/// The request's name for logs (never its content).
pub(crate) fn request_kind(r: &Request) -> &'static str {
    match r {
        Request::Ping => "Ping",
        Request::Enroll { .. } => "Enroll",
        Request::AddDevice { .. } => "AddDevice",
        Request::Hello { .. } => "Hello",
        Request::Prove { .. } => "Prove",
        Request::Whoami => "Whoami",
        Request::ListGroups => "ListGroups",
        Request::Post { .. } => "Post",
        Request::Fetch { .. } => "Fetch",
        Request::Subscribe => "Subscribe",
        Request::Members { .. } => "Members",
        Request::AddDepartment { .. } => "AddDepartment",
        Request::AddUser { .. } => "AddUser",
        Request::RemoveUser { .. } => "RemoveUser",
        Request::ListUsers => "ListUsers",
        Request::ListDepartments => "ListDepartments",
        Request::SetRoles { .. } => "SetRoles",
        Request::AnnouncementDraft { .. } => "AnnouncementDraft",
        Request::AnnouncementSubmit { .. } => "AnnouncementSubmit",
        Request::AnnouncementApprove { .. } => "AnnouncementApprove",
        Request::AnnouncementReject { .. } => "AnnouncementReject",
        Request::AnnouncementPublish { .. } => "AnnouncementPublish",
        Request::AnnouncementAck { .. } => "AnnouncementAck",
        Request::AnnouncementPin { .. } => "AnnouncementPin",
        Request::Announcements { .. } => "Announcements",
        Request::RemovePost { .. } => "RemovePost",
        Request::AuditLog { .. } => "AuditLog",
        Request::SetRetention { .. } => "SetRetention",
        Request::PublishKeyPackages { .. } => "PublishKeyPackages",
        Request::KeyPackageStatus => "KeyPackageStatus",
        Request::ClaimKeyPackages { .. } => "ClaimKeyPackages",
        Request::SecretGroups => "SecretGroups",
        Request::CreateSecretGroup { .. } => "CreateSecretGroup",
        Request::RepairSecretGroup { .. } => "RepairSecretGroup",
        Request::Commit { .. } => "Commit",
        Request::FetchWelcomes => "FetchWelcomes",
        Request::RatchetTree { .. } => "RatchetTree",
        Request::SetDepartments { .. } => "SetDepartments",
        Request::ResetUser { .. } => "ResetUser",
        Request::ChangePassword { .. } => "ChangePassword",
        Request::OwnDevices => "OwnDevices",
        Request::RemoveDevice { .. } => "RemoveDevice",
        Request::CreateRoom { .. } => "CreateRoom",
        Request::InviteToRoom { .. } => "InviteToRoom",
        Request::JoinRoom { .. } => "JoinRoom",
        Request::LeaveRoom { .. } => "LeaveRoom",
        Request::RoomInvitations => "RoomInvitations",
        Request::ImportUsers { .. } => "ImportUsers",
        Request::RenameDepartment { .. } => "RenameDepartment",
        Request::RemoveDepartment { .. } => "RemoveDepartment",
        Request::BeginUpload { .. } => "BeginUpload",
        Request::UploadChunk { .. } => "UploadChunk",
        Request::FinishUpload { .. } => "FinishUpload",
        Request::DownloadChunk { .. } => "DownloadChunk",
        Request::ReleaseAttachment { .. } => "ReleaseAttachment",
        Request::DocList { .. } => "DocList",
        Request::DocPut { .. } => "DocPut",
        Request::DocMkdir { .. } => "DocMkdir",
        Request::DocRemove { .. } => "DocRemove",
        Request::Search { .. } => "Search",
    }
}
