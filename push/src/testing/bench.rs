//! The WebPush bench: pushes per second from the provider to the loopback push service (which
//! verifies VAPID and decrypts every push, so the receiver's cost is real), beside a baseline
//! measured in the same run: plain HTTPS POSTs of the same size to the same server over the
//! same client, without encryption, signing or checks. `relayd bench push` prints the ratio.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;

use super::WebPushTestService;
use crate::http::{HttpsClient, body};
use crate::webpush::WebPushProvider;
use crate::{PushError, PushProvider, VapidKey, Wake};

/// What one bench run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Pushes measured (after one warm-up push).
    pub pushes: usize,
    /// Pushes in flight at once.
    pub concurrency: usize,
    /// The encrypted body's size, which the baseline POSTs too.
    pub body_bytes: usize,
    /// Wall time of the pushes.
    pub push_elapsed: Duration,
    /// Wall time of the baseline POSTs.
    pub baseline_elapsed: Duration,
    /// Delivered pushes per second (encrypted, signed, verified, decrypted).
    pub pushes_per_s: f64,
    /// Plain POSTs of the same size per second, same server, same client.
    pub baseline_posts_per_s: f64,
}

impl BenchReport {
    /// Pushes per second as a share of the baseline (1.0 = no cost beyond HTTPS).
    pub fn ratio(&self) -> f64 {
        if self.baseline_posts_per_s > 0.0 {
            self.pushes_per_s / self.baseline_posts_per_s
        } else {
            0.0
        }
    }
}

/// Sends `pushes` WebPush wakes with `concurrency` in flight to a loopback push service, then
/// as many plain POSTs of the same size, and reports both rates.
pub async fn bench_webpush(pushes: usize, concurrency: usize) -> Result<BenchReport, PushError> {
    let pushes = pushes.max(1);
    let concurrency = concurrency.clamp(1, pushes);
    let service = WebPushTestService::start()
        .await
        .map_err(PushError::Transport)?;
    let client = service.client()?;
    let provider = Arc::new(WebPushProvider::new(
        VapidKey::generate()?,
        "mailto:bench@relay.invalid",
        client.clone(),
    )?);
    let registration = Arc::new(service.subscribe(Some(provider.vapid_public_key())));

    // Warm up: one push opens the connection and tells the body size.
    provider.send(&registration, &Wake::default()).await?;
    let body_bytes = service
        .received()
        .first()
        .map(|push| push.encrypted_bytes)
        .ok_or_else(|| PushError::Transport("the warm-up push was not recorded".into()))?;
    let raw_url = service.raw_url();
    raw_post(&client, &raw_url, body_bytes).await?;

    let started = Instant::now();
    run_split(pushes, concurrency, {
        let provider = provider.clone();
        let registration = registration.clone();
        move || {
            let provider = provider.clone();
            let registration = registration.clone();
            async move {
                provider.send(&registration, &Wake::default()).await?;
                Ok(())
            }
        }
    })
    .await?;
    let push_elapsed = started.elapsed();

    let started = Instant::now();
    run_split(pushes, concurrency, {
        let client = client.clone();
        let raw_url = raw_url.clone();
        move || {
            let client = client.clone();
            let raw_url = raw_url.clone();
            async move { raw_post(&client, &raw_url, body_bytes).await }
        }
    })
    .await?;
    let baseline_elapsed = started.elapsed();

    let delivered = service.received().len();
    if delivered != pushes + 1 || service.raw_posts() != pushes as u64 + 1 {
        return Err(PushError::Transport(format!(
            "the service recorded {delivered} pushes and {} plain POSTs, not {}",
            service.raw_posts(),
            pushes + 1
        )));
    }
    let rate = |elapsed: Duration| pushes as f64 / elapsed.as_secs_f64().max(1e-9);
    Ok(BenchReport {
        pushes,
        concurrency,
        body_bytes,
        push_elapsed,
        baseline_elapsed,
        pushes_per_s: rate(push_elapsed),
        baseline_posts_per_s: rate(baseline_elapsed),
    })
}

/// Runs `total` jobs made by `job`, `concurrency` tasks each taking an equal share.
async fn run_split<F, Fut>(total: usize, concurrency: usize, job: F) -> Result<(), PushError>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), PushError>> + Send,
{
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let share = total / concurrency + usize::from(worker < total % concurrency);
        let job = job.clone();
        tasks.spawn(async move {
            for _ in 0..share {
                job().await?;
            }
            Ok::<_, PushError>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|error| PushError::Transport(format!("a bench task: {error}")))??;
    }
    Ok(())
}

/// A plain POST of `bytes` zero bytes to `url`, expecting 201.
async fn raw_post(client: &HttpsClient, url: &str, bytes: usize) -> Result<(), PushError> {
    let request = Request::post(url)
        .body(body(vec![0u8; bytes]))
        .map_err(|error| PushError::Config(format!("a bench request: {error}")))?;
    let reply = client.send(request).await?;
    if reply.status.as_u16() != 201 {
        return Err(PushError::Transport(format!(
            "the baseline POST got {}",
            reply.status
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bench_delivers_every_push_and_reports_both_rates() {
        let report = bench_webpush(20, 4).await.expect("the bench runs");
        assert_eq!(report.pushes, 20);
        assert_eq!(report.concurrency, 4);
        assert!(report.body_bytes > crate::wake::WEBPUSH_WAKE_PLAINTEXT.len());
        assert!(report.pushes_per_s > 0.0 && report.baseline_posts_per_s > 0.0);
        assert!(report.ratio() > 0.0);
    }
}
