//! A device's `FetchQueue` at its home region: a page read (a request of its own), or an ack
//! only, gathered with other devices' acks for the same region into one `AckMany` (see
//! [`crate::acks`]).

use relay_proto::wire::{self, region_request, region_response};
use relay_proto::{AccountId, ErrorCode, ProtoError, RegionId};

use super::EdgeService;
use super::routing::unexpected_answer;
use crate::acks::Added;

impl EdgeService {
    /// `request` (a `FetchQueue`) sent alone to the home region of `account`.
    pub(super) async fn fetch_at_home(
        &self,
        account: AccountId,
        request: wire::ForDevice,
    ) -> Result<wire::QueueBatch, ProtoError> {
        match self
            .to_home(account, region_request::Body::FetchQueue(request))
            .await?
        {
            (_, region_response::Body::Queue(batch)) => Ok(batch),
            _ => Err(unexpected_answer()),
        }
    }

    /// A device's ack-only `FetchQueue`, gathered with other devices' acks for the same home
    /// region into one `AckMany` (see [`crate::acks`]). What the gathering cannot settle goes
    /// as a request of its own: a refusal as not homed there (the account moved; [`Self::to_home`]
    /// follows it) and a region too old for `AckMany`.
    pub(super) async fn ack_gathered(
        &self,
        account: AccountId,
        request: wire::ForDevice,
    ) -> Result<wire::QueueBatch, ProtoError> {
        let home = self.home_of(account).await?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        let added = self
            .inner
            .acks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .add(home, request.clone(), answer);
        if added == Added::Start {
            tokio::spawn(self.clone().send_gathered_acks(home));
        }
        let gathered = answered.await.unwrap_or_else(|_| {
            Err(ProtoError::new(
                ErrorCode::Internal,
                "the edge dropped an acknowledgement on its way; send it again",
            ))
        });
        match gathered {
            Err(error)
                if matches!(
                    error.code,
                    ErrorCode::UnknownAccount | ErrorCode::UnsupportedRequest
                ) =>
            {
                self.fetch_at_home(account, request).await
            }
            answer => answer,
        }
    }

    /// Sends the acks gathered for `region`, an `AckMany` at a time, until none wait, and
    /// answers each with what the region said of it (a failed request: its error, to each).
    async fn send_gathered_acks(self, region: RegionId) {
        loop {
            let taken = self
                .inner
                .acks
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .take(region);
            if taken.is_empty() {
                return;
            }
            let (requests, waiters): (Vec<_>, Vec<_>) = taken.into_iter().unzip();
            let count = requests.len();
            let answer = self
                .region_request(
                    region,
                    region_request::Body::AckMany(wire::AckMany { acks: requests }),
                )
                .await;
            let outcomes = match answer {
                Ok(region_response::Body::AcksDone(done)) if done.outcomes.len() == count => {
                    done.outcomes
                }
                // Every waiter gets what the whole request got.
                other => {
                    let error = other.err().unwrap_or_else(unexpected_answer);
                    for waiter in waiters {
                        let _ = waiter.send(Err(error.clone()));
                    }
                    continue;
                }
            };
            for (waiter, outcome) in waiters.into_iter().zip(outcomes) {
                let answer = match outcome.outcome {
                    Some(wire::ack_outcome::Outcome::Queue(batch)) => Ok(batch),
                    Some(wire::ack_outcome::Outcome::Error(error)) => Err(error.into()),
                    None => Err(unexpected_answer()),
                };
                let _ = waiter.send(answer);
            }
        }
    }
}
