//! What arrives: the device queue, fetched page by page after the cursor and acknowledged once
//! each page is committed ([`crate::inbound`] classifies the entries), and the keys the region
//! reports with each page and at authentication, kept in shape ([`crate::fallback`] decides the
//! fallback key's life).
//!
//! One fetch and one ack are in flight at a time, each its own request: the next page is read
//! while the region commits the acks of the pages before it (and their delivered receipts),
//! so reading never waits for that commit. Pages still arrive in queue order, and an ack is
//! forgotten only once the region answered it (the ack is durable). A catch-up ends when a
//! page comes back empty, or reaches the latest queue sequence the region read with it (no
//! further fetch only to hear "nothing more"), and every ack owed was answered.

use relay_proto::limits::{
    ONE_TIME_KEYS_AT_REGISTRATION, ONE_TIME_KEYS_LOW_WATERMARK, ONE_TIME_KEYS_PER_UPLOAD_MAX,
};
use relay_proto::wire::{FallbackKeyState, OneTimeKeyCount, QueueEntry};

use super::{Core, Purpose, Report, Request, Response};
use crate::error::{ClientError, Result};
use crate::events::Event;
use crate::fallback::{self, FallbackFacts};
use crate::inbound::{Inbound, process_entries};
use crate::limits::{
    ACKS_PER_REQUEST_MAX, FETCH_ROUNDS_MAX, KEY_UPLOAD_INTERVAL_MS, RETRY_DELAY_MS_MAX,
    ROLLBACK_RECHECKS_MAX,
};
use crate::outbox::retry_delay_ms;

/// The incoming side's state.
#[derive(Debug, Default)]
pub(super) struct Incoming {
    /// Whether the queue is to be fetched (to its end).
    pub(super) wanted: bool,
    /// Whether a fetch is in flight.
    in_flight: bool,
    /// Whether a fetch was asked for while one was in flight (or the catch-up waited for its
    /// acks): the region may have read that page before the entry a push announced was
    /// committed, so its end is not the queue's.
    wanted_meanwhile: bool,
    /// Whether this catch-up reached the queue's end (or its round limit) and waits for its
    /// acks to be answered.
    ended: bool,
    /// Whether an ack is in flight.
    acking: bool,
    /// Whether acks may be owed (the store says which): set when a page was committed and on
    /// connecting, kept while an ack fails, cleared when the store owes none.
    acks_owed: bool,
    /// Pages fetched in this catch-up.
    rounds: usize,
    /// "Rolled back" refusals checked again in a row (another process moved the cursor).
    rechecks: u32,
    /// Catch-ups finished (the queue's end, or the round limit).
    pub(super) caught_up: u64,
    /// A fetch that failed for good.
    pub(super) error: Option<ClientError>,
    /// Fetches failed in a row (retryable errors).
    failures: u32,
    /// When keys were last uploaded on this connection (ms).
    pub(super) key_upload_at: Option<u64>,
    /// Whether an upload is in flight.
    uploading: bool,
    /// The highest queue sequence a push announced on this connection.
    announced: u64,
}

impl Incoming {
    /// Whether an upload is in flight.
    pub(super) fn uploading(&self) -> bool {
        self.uploading
    }

    /// Asks for a catch-up.
    pub(super) fn want(&mut self) {
        if self.in_flight || self.ended {
            self.wanted_meanwhile = true;
        }
        if !self.wanted {
            self.wanted = true;
            self.rounds = 0;
        }
    }

    /// Acks may be owed from before (an earlier connection or run).
    pub(super) fn acks_may_be_owed(&mut self) {
        self.acks_owed = true;
    }

    /// A new connection: its pushes announce afresh.
    pub(super) fn connected(&mut self) {
        self.announced = 0;
    }
}

impl Core {
    /// Acknowledges what is owed when no ack is in flight, and fetches the next page when one
    /// is wanted and none is in flight.
    pub(super) fn step_fetch(&mut self) -> Result<()> {
        self.step_ack()?;
        self.finish_catch_up();
        if !self.incoming.wanted
            || self.incoming.in_flight
            || self.incoming.ended
            || !self.has_room()
        {
            return Ok(());
        }
        let cursor = self.store.queue_cursor()?;
        self.incoming.in_flight = true;
        self.incoming.wanted_meanwhile = false;
        self.request(
            Request::Fetch {
                after_queue_seq: cursor,
            },
            Purpose::Fetch { cursor },
        );
        Ok(())
    }

    /// Sends the acks owed (entries of committed pages, the oldest [`ACKS_PER_REQUEST_MAX`]) in
    /// a request of their own, when none is in flight. Only during a catch-up, as when acks
    /// went with fetches: a device connected for something else (an on-demand send) does not
    /// start requests it would leave behind.
    fn step_ack(&mut self) -> Result<()> {
        if !self.incoming.wanted
            || !self.incoming.acks_owed
            || self.incoming.acking
            || !self.has_room()
        {
            return Ok(());
        }
        let mut acks = self.store.pending_acks()?;
        if acks.is_empty() {
            self.incoming.acks_owed = false;
            return Ok(());
        }
        acks.truncate(ACKS_PER_REQUEST_MAX);
        self.incoming.acking = true;
        self.request(Request::Ack(acks.clone()), Purpose::Ack(acks));
        Ok(())
    }

    /// Ends the catch-up once it reached the queue's end and no ack is owed or in flight.
    fn finish_catch_up(&mut self) {
        if !self.incoming.ended || self.incoming.acking || self.incoming.acks_owed {
            return;
        }
        // A push (or a sync) that came while this catch-up ended asks for one more.
        self.incoming.ended = false;
        self.incoming.wanted = std::mem::take(&mut self.incoming.wanted_meanwhile);
        self.incoming.rounds = 0;
        self.incoming.caught_up += 1;
    }

    /// The answer to an ack: the acknowledged entries are forgotten (the region committed the
    /// ack and its delivered receipts). A failure keeps them owed, for the next ack.
    pub(super) fn handle_acked(
        &mut self,
        acks: Vec<u64>,
        answer: Result<Response>,
        now_ms: u64,
    ) -> Result<()> {
        self.incoming.acking = false;
        match answer {
            Ok(Response::Acked) => {
                self.store.write(|writer| writer.acked(&acks))?;
                self.incoming.acks_owed = !self.store.pending_acks()?.is_empty();
            }
            Ok(_) => {
                let error =
                    ClientError::UnexpectedResponse("an answer that is not an ack's".into());
                self.note_request_error(&error, now_ms);
                self.give_up_acks(error);
            }
            Err(error) if error.is_retryable() || error.needs_reconnect() => {
                self.retry_on_next_connection(error, now_ms);
            }
            Err(error) => self.give_up_acks(error),
        }
        self.finish_catch_up();
        Ok(())
    }

    /// An ack failed for good: the catch-up stops with `error`, and the acks stay owed (in the
    /// store) for the next connection.
    fn give_up_acks(&mut self, error: ClientError) {
        self.incoming.wanted = false;
        self.incoming.ended = false;
        self.incoming.acks_owed = false;
        self.incoming.error = Some(error);
    }

    /// A fetch or an ack failed with a retryable error: the catch-up goes on over the next
    /// connection, after a backoff.
    fn retry_on_next_connection(&mut self, error: ClientError, now_ms: u64) {
        self.incoming.failures = self.incoming.failures.saturating_add(1);
        let delay = retry_delay_ms(self.incoming.failures, &mut self.rng)
            .max(error.retry_after_ms().unwrap_or(0))
            .min(RETRY_DELAY_MS_MAX);
        self.drop_connection(&error.to_string(), Some(delay), now_ms);
        self.last_error = Some((error, now_ms));
    }

    /// The answer to a fetch: the page is processed and committed (its acks are owed from then
    /// on), what it held is reported, keys are kept in shape, and the next page is fetched
    /// until the queue's end.
    pub(super) fn handle_fetched(
        &mut self,
        cursor: u64,
        answer: Result<Response>,
        now_ms: u64,
    ) -> Result<()> {
        self.incoming.in_flight = false;
        let batch = match answer {
            Ok(Response::Queue(batch)) => batch,
            Ok(_) => {
                let error =
                    ClientError::UnexpectedResponse("an answer that is not a queue page".into());
                self.note_request_error(&error, now_ms);
                self.incoming.wanted = false;
                self.incoming.error = Some(error);
                return Ok(());
            }
            Err(error) => {
                if let Some(refusal) = super::rolled_back_refusal(&error) {
                    // Another process on this data directory may have stored and acked entries
                    // since the cursor was read: it raised the cursor first.
                    if self.incoming.rechecks < ROLLBACK_RECHECKS_MAX
                        && self.store.queue_cursor()? > cursor
                    {
                        self.incoming.rechecks += 1;
                        return Ok(());
                    }
                    self.roll_back(refusal);
                    return Ok(());
                }
                if error.is_retryable() || error.needs_reconnect() {
                    self.retry_on_next_connection(error, now_ms);
                } else {
                    self.incoming.wanted = false;
                    self.incoming.error = Some(error);
                }
                return Ok(());
            }
        };
        self.incoming.rechecks = 0;
        self.incoming.failures = 0;
        let count = batch.entries.len();
        // The page was read with the queue's latest sequence at the same version: a page that
        // reaches it is the queue's end then (what came after is announced by a push).
        let at_end = batch
            .entries
            .last()
            .is_none_or(|last| last.queue_seq >= batch.latest_queue_seq);
        if count > 0 {
            self.take_page(cursor, &batch.entries)?;
        }
        let keys = OneTimeKeyCount {
            remaining: batch.one_time_keys_remaining,
            fallback_key: batch.fallback_key,
            cached: false,
        };
        self.keep_keys(keys, at_end, now_ms)?;
        self.incoming.rounds += 1;
        if at_end || self.incoming.rounds >= FETCH_ROUNDS_MAX {
            self.incoming.ended = true;
            self.step_ack()?;
            self.finish_catch_up();
        }
        Ok(())
    }

    /// A push announced entries up to `latest_queue_seq` and brought `entries` along. When no
    /// fetch is in flight and the run (past what is stored already) follows the cursor, it is
    /// taken as a fetched page and acknowledged; if it reaches every entry announced on this
    /// connection, that is the catch-up's end, with no fetch. Anything else asks for a fetch.
    pub(super) fn handle_pushed(
        &mut self,
        latest_queue_seq: u64,
        entries: Vec<QueueEntry>,
    ) -> Result<()> {
        self.incoming.announced = self.incoming.announced.max(latest_queue_seq);
        let cursor = if self.incoming.in_flight || entries.is_empty() {
            None
        } else {
            Some(self.store.queue_cursor()?)
        };
        let fresh = match cursor {
            Some(cursor) => {
                let fresh: Vec<QueueEntry> = entries
                    .into_iter()
                    .skip_while(|entry| entry.queue_seq <= cursor)
                    .collect();
                fresh
                    .first()
                    .is_some_and(|first| first.queue_seq == cursor + 1)
                    .then_some((cursor, fresh))
            }
            None => None,
        };
        let Some((cursor, fresh)) = fresh else {
            self.incoming.want();
            return Ok(());
        };
        self.take_page(cursor, &fresh)?;
        let last = fresh.last().map_or(cursor, |last| last.queue_seq);
        if last < self.incoming.announced {
            self.incoming.want();
        } else if !self.incoming.wanted {
            // A catch-up of its own, at its end already: its acks go, then it finishes.
            self.incoming.wanted = true;
            self.incoming.rounds = 0;
            self.incoming.ended = true;
        }
        self.step_ack()?;
        self.finish_catch_up();
        Ok(())
    }

    /// Processes and stores `entries`, the page after `cursor`, reporting what arrived; their
    /// acks are owed from then on.
    fn take_page(&mut self, cursor: u64, entries: &[QueueEntry]) -> Result<()> {
        {
            let me = self.identity.address();
            let wall_ms = self.wall_ms;
            let reports = self.store.write_with_crypto(|writer, crypto| {
                process_entries(writer, crypto, me, cursor, entries, wall_ms)
            })?;
            // Messages first, then the changes of the page and the own devices' sync messages
            // (committed above, so redelivered after a crash and applied again).
            self.reports.extend(
                reports
                    .iter()
                    .filter(|report| {
                        !matches!(
                            report,
                            Inbound::Change { .. }
                                | Inbound::Sync { .. }
                                | Inbound::Bootstrap { .. }
                        )
                    })
                    .cloned()
                    .map(Report::Inbound),
            );
            self.apply_to_history(&reports)?;
            self.incoming.acks_owed = true;
        }
        Ok(())
    }

    /// Keeps the published keys in shape after the region reported `keys`: fresh one-time keys
    /// when fewer than the low watermark are left, and a new signed fallback key when
    /// [`fallback::plan`] says so, or one made earlier that never went up; the previous
    /// fallback key is forgotten when that is safe (`queue_drained`: the queue was just fetched
    /// to the end). At most one upload every [`KEY_UPLOAD_INTERVAL_MS`] per connection; a
    /// failed upload is reported and retried later.
    pub(super) fn keep_keys(
        &mut self,
        keys: OneTimeKeyCount,
        queue_drained: bool,
        now_ms: u64,
    ) -> Result<()> {
        if self.incoming.uploading
            || self
                .incoming
                .key_upload_at
                .is_some_and(|at| now_ms.saturating_sub(at) < KEY_UPLOAD_INTERVAL_MS)
        {
            return Ok(());
        }
        let region_state =
            FallbackKeyState::try_from(keys.fallback_key).unwrap_or(FallbackKeyState::Unknown);
        let low = keys.remaining < ONE_TIME_KEYS_LOW_WATERMARK;
        let wanted = (ONE_TIME_KEYS_AT_REGISTRATION as u32).saturating_sub(keys.remaining);
        let count = (wanted as usize).clamp(1, ONE_TIME_KEYS_PER_UPLOAD_MAX);
        let wall_ms = self.wall_ms;
        // The private halves are durable before the public halves leave the device. Keys left
        // unpublished by an earlier failed upload go first, instead of new ones.
        let (mut one_time_keys, fallback_key) =
            self.store.write_with_crypto(|writer, crypto| {
                let times = writer.fallback_times()?;
                let plan = fallback::plan(FallbackFacts {
                    times,
                    region_state,
                    unpublished: crypto.unpublished_fallback_key().is_some(),
                    queue_drained,
                    now_ms: wall_ms,
                });
                if plan.forget_previous {
                    crypto.forget_previous_fallback_key();
                }
                if plan.generate {
                    crypto.generate_fallback_key();
                }
                if plan != fallback::FallbackPlan::default() {
                    writer.set_fallback_times(&fallback::after(times, plan, wall_ms))?;
                }
                if low && crypto.unpublished_one_time_keys().is_empty() {
                    crypto.generate_one_time_keys(count);
                }
                Ok((
                    crypto.unpublished_one_time_keys(),
                    crypto.unpublished_fallback_key(),
                ))
            })?;
        if one_time_keys.is_empty() && fallback_key.is_none() {
            return Ok(());
        }
        self.incoming.key_upload_at = Some(now_ms);
        self.incoming.uploading = true;
        one_time_keys.truncate(ONE_TIME_KEYS_PER_UPLOAD_MAX);
        self.request(
            Request::UploadKeys {
                one_time_keys,
                fallback_key,
            },
            Purpose::UploadKeys,
        );
        Ok(())
    }

    /// The answer to a key upload: every key is published once the region stored them.
    pub(super) fn handle_keys_uploaded(
        &mut self,
        answer: Result<Response>,
        now_ms: u64,
    ) -> Result<()> {
        self.incoming.uploading = false;
        match answer {
            Ok(Response::KeysUploaded(_)) => self.store.write_with_crypto(|_, crypto| {
                crypto.mark_keys_published();
                Ok(())
            }),
            Ok(_) => {
                self.reports.push_back(Report::Event(Event::Note {
                    message: "uploading keys failed: an answer that is not an upload's".into(),
                }));
                Ok(())
            }
            Err(error) => {
                self.note_request_error(&error, now_ms);
                self.reports.push_back(Report::Event(Event::Note {
                    message: format!("uploading keys failed: {error}"),
                }));
                Ok(())
            }
        }
    }
}
