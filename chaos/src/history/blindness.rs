//! I5 blindness: no server stores the plaintext of a message.

use std::collections::{BTreeMap, BTreeSet};

use super::trace::{GroupMessageRef, MessageRef};
use super::{Invariant, Violation};

/// I5: finds plaintext of the workload's messages in what a server stored. `stored` yields each
/// key and value; every occurrence of a planned message's text is a violation.
pub fn check_blindness<'a>(
    place: &str,
    planned: &BTreeMap<MessageRef, u32>,
    stored: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Vec<Violation> {
    find_plaintexts(place, stored, plaintexts_in, |message| {
        planned.contains_key(message)
    })
}

/// I5 for groups: finds plaintext of the workload's group messages (`planned`) in what a server
/// stored, as [`check_blindness`] does for 1:1 messages.
pub fn check_group_blindness<'a>(
    place: &str,
    planned: &BTreeSet<GroupMessageRef>,
    stored: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Vec<Violation> {
    if planned.is_empty() {
        return Vec::new();
    }
    find_plaintexts(place, stored, group_plaintexts_in, |message| {
        planned.contains(message)
    })
}

/// A violation for every text `found_in` finds in a stored key or value that `planned` says the
/// workload sent.
fn find_plaintexts<'a, M: std::fmt::Display>(
    place: &str,
    stored: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    found_in: impl Fn(&[u8]) -> Vec<M>,
    planned: impl Fn(&M) -> bool,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (key, value) in stored {
        for bytes in [key, value] {
            for message in found_in(bytes).iter().filter(|message| planned(message)) {
                violations.push(Violation {
                    invariant: Invariant::Blindness,
                    detail: format!(
                        "{place} stores the plaintext of {message} under key {}",
                        printable(key)
                    ),
                });
            }
        }
    }
    violations
}

/// The workload's group message texts ("c<n> #g<group>.<m>") found in `bytes`, in time linear
/// in its length.
fn group_plaintexts_in(bytes: &[u8]) -> Vec<GroupMessageRef> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = bytes[at..].windows(3).position(|triple| triple == b" #g") {
        let mark = at + offset;
        let digits = |from: usize| {
            bytes[from.min(bytes.len())..]
                .iter()
                .take_while(|byte| byte.is_ascii_digit())
                .count()
        };
        let digits_before = bytes[..mark]
            .iter()
            .rev()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        let start = mark - digits_before;
        let group_digits = digits(mark + 3);
        let dot = mark + 3 + group_digits;
        let number_digits = digits(dot + 1);
        if digits_before > 0
            && start > 0
            && bytes[start - 1] == b'c'
            && group_digits > 0
            && bytes.get(dot) == Some(&b'.')
            && number_digits > 0
        {
            let text = String::from_utf8_lossy(&bytes[start - 1..dot + 1 + number_digits]);
            if let Some(message) = GroupMessageRef::parse(&text) {
                found.push(message);
            }
        }
        at = mark + 3;
    }
    found
}

/// The workload's message texts ("c<n> #<m>") found in `bytes`, in time linear in its length.
fn plaintexts_in(bytes: &[u8]) -> Vec<MessageRef> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = bytes[at..].windows(2).position(|pair| pair == b" #") {
        let hash = at + offset;
        let digits_before = bytes[..hash]
            .iter()
            .rev()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        let start = hash - digits_before;
        let digits_after = bytes[hash + 2..]
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        if digits_before > 0 && digits_after > 0 && start > 0 && bytes[start - 1] == b'c' {
            let text = String::from_utf8_lossy(&bytes[start - 1..hash + 2 + digits_after]);
            if let Some(message) = MessageRef::parse(&text) {
                found.push(message);
            }
        }
        at = hash + 2;
    }
    found
}

fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&byte| {
            if byte.is_ascii_graphic() {
                char::from(byte).to_string()
            } else {
                format!("\\x{byte:02x}")
            }
        })
        .collect()
}
