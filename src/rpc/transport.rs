//! Reader and writer tasks of one plug-in connection.
//!
//! The reader never awaits anything that can block: replies go to oneshots, chunks to bounded
//! channels with `try_send`. Junk lines and oversized frames are counted, logged and skipped;
//! the stream resynchronises at the next newline (protocol.md §2.2).

use std::sync::atomic::Ordering;

use bkg_plugin_sdk::codec::{Frame, LineDecoder, Overflow};
use bkg_plugin_sdk::protocol::{self, Message, RequestId, RpcError, StreamParams, methods};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::RpcClient;

/// Longest prefix of a junk line that is logged.
const JUNK_PREVIEW: usize = 256;

pub(super) async fn read_loop<R: AsyncRead + Unpin>(stdout: R, max: usize, client: RpcClient) {
    let mut frames = FramedRead::with_capacity(stdout, LineDecoder::new(max, Overflow::Discard), 64 * 1024);
    while let Some(frame) = frames.next().await {
        client.touch();
        match frame {
            Ok(Frame::Line(line)) => dispatch(&client, &line),
            Ok(Frame::Oversized(n)) => {
                client.0.stats.oversized_frames.fetch_add(1, Ordering::Relaxed);
                tracing::error!(bytes = n, cap = max, "plug-in sent an oversized message; discarded");
            }
            Ok(Frame::Truncated(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading plug-in stdout failed");
                break;
            }
        }
    }
    client.close();
}

fn dispatch(client: &RpcClient, line: &[u8]) {
    match protocol::decode(line) {
        Ok(Message::Response { id: RequestId::Num(id), outcome }) if id > 0 => client.complete(id as u64, outcome),
        Ok(Message::Response { id, .. }) => {
            client.0.stats.late_messages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%id, "response with an id the daemon never sent");
        }
        Ok(Message::Notification { method, params }) if method == methods::STREAM => {
            match protocol::parse_params::<StreamParams>(params.as_deref()) {
                Ok(StreamParams { id: RequestId::Num(id), data, .. }) if id > 0 => client.stream_chunk(id as u64, data),
                Ok(_) | Err(_) => tracing::warn!("malformed $/stream notification"),
            }
        }
        Ok(Message::Notification { method, .. }) => tracing::debug!(%method, "ignoring notification from plug-in"),
        Ok(Message::Request { id, method, .. }) => {
            // svp/1 plug-ins send no requests; answer so the plug-in does not wait forever.
            let err = RpcError::method_not_found(&method);
            let _ = client.0.out.try_send(protocol::encode_response(Some(&id), Err(&err)));
        }
        Err(e) => {
            let n = client.0.stats.junk_lines.fetch_add(1, Ordering::Relaxed) + 1;
            // Log the first few and then every 100th, so a junk flood does not flood our log.
            if n <= 10 || n.is_multiple_of(100) {
                let preview = String::from_utf8_lossy(&line[..line.len().min(JUNK_PREVIEW)]).into_owned();
                tracing::warn!(error = %e, junk_lines = n, preview = %preview.escape_debug(), "junk on plug-in stdout");
            }
        }
    }
}

pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut stdin: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    close: CancellationToken,
    client: RpcClient,
) {
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        // Flush what is queued before honouring a close, so `shutdown` reaches the plug-in.
        let first = tokio::select! {
            biased;
            msg = rx.recv() => msg,
            () = close.cancelled() => rx.try_recv().ok(),
        };
        let Some(first) = first else { break };
        bkg_plugin_sdk::codec::coalesce(&mut batch, &first, &mut rx);
        if let Err(e) = async {
            stdin.write_all(&batch).await?;
            stdin.flush().await
        }
        .await
        {
            tracing::debug!(error = %e, "writing to plug-in stdin failed");
            client.close();
            break;
        }
    }
    // Dropping stdin closes the pipe: EOF for the plug-in.
    drop(stdin);
}
