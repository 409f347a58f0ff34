//! Changes a linked client's devices make to messages: edits, deletions for everyone and
//! reactions drawn after their syncs ([`change_some`]), and the contested message both devices
//! edit while apart.

use std::cell::RefCell;
use std::rc::Rc;

use rand::Rng;
use rand::rngs::StdRng;
use relay_client::ClientError;

use super::{
    App, CHANGE_PERCENT, ClientSetup, Ledger, OWN_CHANGE_DELETE_PERCENT, OWN_CHANGE_EDIT_PERCENT,
    Observer, REACTIONS, retryable,
};
use crate::history::{Change, MessageRef, What, client_name, device_name};

/// Maybe (by [`CHANGE_PERCENT`], while it has changes left) changes one message device `device`
/// of client `me` saw: edits it or deletes it for everyone if the account sent it and the draw
/// says so, else reacts to it. A message the documents do not hold yet is left alone. The
/// simulation's linked clients and `relayd chaos`'s both change through it.
pub async fn change_some<L: Ledger>(
    ledger: &RefCell<L>,
    (me, device): (u32, u32),
    app: &mut App,
    local: &RefCell<Observer>,
    rng: &mut StdRng,
    changes_left: &mut u32,
) -> Result<(), ClientError> {
    let candidates = local.borrow().changeable.len();
    if *changes_left == 0 || candidates == 0 || !rng.random_ratio(CHANGE_PERCENT, 100) {
        return Ok(());
    }
    let (peer, id, message, own) =
        local.borrow().changeable[rng.random_range(0..candidates)].clone();
    let draw = rng.random_range(0..100);
    let reaction = REACTIONS[rng.random_range(0..REACTIONS.len())];
    let change = match own {
        true if draw < OWN_CHANGE_EDIT_PERCENT => Change::Edit,
        true if draw < OWN_CHANGE_EDIT_PERCENT + OWN_CHANGE_DELETE_PERCENT => Change::Delete,
        _ => Change::React(reaction.to_owned()),
    };
    if make_change(ledger, (me, device), app, (peer, &id, message), change).await? {
        *changes_left -= 1;
    }
    Ok(())
}

/// Device `device` of client `me` makes `change` to `message` (its id `id` in the chat with
/// `peer`) and records it in `ledger`; whether it was made. A change refused (a message deleted
/// meanwhile) or cut off by a fault a retry can outlast is not recorded; other errors end it.
async fn make_change<L: Ledger>(
    ledger: &RefCell<L>,
    (me, device): (u32, u32),
    app: &mut App,
    (peer, id, message): (u32, &str, MessageRef),
    change: Change,
) -> Result<bool, ClientError> {
    let peer = client_name(peer);
    let changed = match &change {
        Change::Edit => {
            let text = message.edited_text(&device_name(me, device));
            app.edit(&peer, id, &text).await
        }
        Change::Delete => app.delete(&peer, id).await,
        Change::React(reaction) => app.react(&peer, id, reaction).await,
    };
    match changed {
        Ok(()) => {
            let mut ledger = ledger.borrow_mut();
            *ledger
                .progress()
                .changes_made
                .entry((me, device))
                .or_default() += 1;
            ledger.record(What::Changed {
                client: me,
                device,
                message,
                change,
            });
            Ok(true)
        }
        Err(ClientError::Invalid(_)) => Ok(false),
        Err(error) => retryable(error).map(|()| false),
    }
}

/// The second device of a linked client, going offline: names one of its account's messages as
/// contested (the first it can change), for the first device to edit while this one is away
/// ([`edit_contested`]) and this one to edit as it comes back, before it fetches the first
/// device's edit (the same function, called again): two concurrent edits, of which the later one by
/// hybrid logical clock must win on both devices. Once per run.
pub(super) fn name_contested(setup: &ClientSetup, local: &Rc<RefCell<Observer>>) {
    let me = setup.plan.client;
    if setup.plan.removes_at_ms.is_some()
        || setup.shared.borrow().progress.contested.contains_key(&me)
    {
        return;
    }
    let own = local
        .borrow()
        .changeable
        .iter()
        .find(|(_, _, _, own)| *own)
        .map(|(_, _, message, _)| *message);
    if let Some(message) = own {
        setup
            .shared
            .borrow_mut()
            .progress
            .contested
            .insert(me, (message, false, false));
    }
}

/// Device `device` (0 the first, 1 the linked one) of a linked client edits the contested
/// message ([`name_contested`]) if it has not yet and knows the message; the second device only
/// once the first has (or `now` says it cannot wait longer).
pub(super) async fn edit_contested(
    setup: &ClientSetup,
    device: u32,
    app: &mut App,
    local: &Rc<RefCell<Observer>>,
    now: bool,
) -> turmoil::Result {
    let me = setup.plan.client;
    let Some((message, first, second)) = setup.shared.borrow().progress.contested.get(&me).copied()
    else {
        return Ok(());
    };
    let due = match device {
        0 => !first,
        _ => !second && (first || now),
    };
    if !due {
        return Ok(());
    }
    let known = local
        .borrow()
        .changeable
        .iter()
        .find(|(_, _, known, _)| *known == message)
        .cloned();
    let Some((peer, id, _, _)) = known else {
        return Ok(());
    };
    // Made or refused (deleted meanwhile), it is done.
    make_change(
        &setup.shared,
        (me, device),
        app,
        (peer, &id, message),
        Change::Edit,
    )
    .await?;
    if let Some(contested) = setup.shared.borrow_mut().progress.contested.get_mut(&me) {
        match device {
            0 => contested.1 = true,
            _ => contested.2 = true,
        }
    }
    Ok(())
}
