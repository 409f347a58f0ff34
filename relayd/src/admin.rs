//! `relayd admin`: operator commands on a stopped region's store. Wiring only: the check and
//! the repair (finding and opening the store, the marker file, the reports and what they ask
//! of the operator) are `home_region::repair`; this module parses the arguments, prints the
//! report, and turns what is left to do into a non-zero exit.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use home_region::repair;
use relay_proto::clock::{Clock, SystemClock};

/// `relayd admin` commands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Check a region's store, offline (stop the region first): the storage engine's integrity
    /// check, the store's identity against its marker file, then every device queue: each
    /// entry decoded and resolved exactly as a fetch resolves it (the chat log entry, the
    /// envelope, the device's ciphertext) and the queue counters compared with the entries.
    /// Lists damaged and quarantined devices; exits non-zero when anything is damaged.
    ///
    /// Example: relayd admin check-store --data ./devnet-data/region-2
    CheckStore {
        /// The region's data folder (its config's `data_dir`, holding region.redb).
        #[arg(long)]
        data: std::path::PathBuf,
        /// Print one JSON object instead of the report.
        #[arg(long)]
        json: bool,
    },
    /// Repair a region's store, offline (stop the region first): remove the queue entries of
    /// each device that cannot be delivered, telling their senders with "expired" receipts
    /// where the entry still names them, rewrite a wrong depth counter, and lift the device's
    /// quarantine once its queue reads well. Without --device, every damaged or quarantined
    /// device is repaired.
    ///
    /// Example: relayd admin repair-store --data ./devnet-data/region-2 --device 2/1
    RepairStore {
        /// The region's data folder (its config's `data_dir`, holding region.redb).
        #[arg(long)]
        data: std::path::PathBuf,
        /// A device to repair, as ACCOUNT/DEVICE (repeatable).
        #[arg(long = "device", value_name = "ACCOUNT/DEVICE")]
        devices: Vec<String>,
        /// Print one JSON object instead of the report.
        #[arg(long)]
        json: bool,
    },
    /// Promote a region's standby after its primary is lost: the standby's copy becomes the
    /// region's store. Stop the standby (and the region, if it still runs) first. The copy must
    /// be whole, pass the integrity check and be this region's store; the region's data folder
    /// is then moved aside (to DATA_DIR.replaced-<unix seconds>, never deleted) and the
    /// standby's folder moved into its place, so `relayd region --config REGION.toml` starts
    /// on the copy, from the last commit the region acknowledged.
    ///
    /// Example: relayd admin promote --standby-config ./devnet-data/standby-1.toml
    ///          --region-config ./devnet-data/region-1.toml
    Promote {
        /// The standby's configuration file (its data folder, region and CA are used).
        #[arg(long)]
        standby_config: std::path::PathBuf,
        /// The region's configuration file (its data folder, region and CA are used).
        #[arg(long)]
        region_config: std::path::PathBuf,
        /// Print one JSON object instead of the report.
        #[arg(long)]
        json: bool,
    },
    /// Fail a running region over to its standby, planned (maintenance, a move of machines):
    /// the region holds new requests, lets those under way finish, ships every commit to its
    /// standby and asks it to take over at that version. The standby (it needs a [promotion]
    /// section) serves as the region on its own address and writes it into the peers file; the
    /// old primary then stops (exit status 3), and the requests it held are sent again to the
    /// standby by edges and regions: devices see slower answers, no failed send. Asked with
    /// the region's own certificate, from its configuration. If the standby refuses or does
    /// not take over in time, the region serves on and this says why.
    ///
    /// Example: relayd admin failover --region 1 --config ./devnet-data/region-1.toml
    Failover {
        /// The region to fail over (must be the one CONFIG describes).
        #[arg(long)]
        region: u32,
        /// The region's configuration file (its certificate, key, CA and peers file are used).
        #[arg(long)]
        config: std::path::PathBuf,
        /// Print one JSON object instead of the sentence.
        #[arg(long)]
        json: bool,
    },
    /// Move an account's home to another region (a user who moved continents, a region to
    /// empty): the account's home holds the account's requests (devices see a slower answer,
    /// no error), hands its devices, keys, device marks, queues (with the messages they hold),
    /// blocks, presence and push registrations and its place in each of its chats to the new
    /// home, has the directory writer move the home with an epoch bump, and lets go. Edges
    /// follow at once (the old home tells them, and turns away what still comes to it); the
    /// account's devices keep their connections. Open pairings do not move (a link in progress
    /// starts again), nor do media blobs (served where they were uploaded until they expire).
    /// Asked of the account's home with that region's own certificate, from its configuration.
    ///
    /// Example: relayd admin move-home alice --to 2 --config ./devnet-data/region-1.toml
    MoveHome {
        /// The account: its id, or its name.
        account: String,
        /// The region to move it to.
        #[arg(long)]
        to: u32,
        /// The configuration file of the account's home region now (its certificate, key, CA
        /// and peers file are used).
        #[arg(long)]
        config: std::path::PathBuf,
        /// Print one JSON object instead of the sentence.
        #[arg(long)]
        json: bool,
    },
    /// Issue registration tokens: each lets --uses accounts register (`relay register NAME
    /// --token TOKEN`) until it expires. The tokens are made and stored (as their SHA-256
    /// only) by the deployment's directory writer, which this asks over the internal network
    /// with the certificate of the region CONFIG describes; they are printed once, here.
    ///
    /// Example: relayd admin token --config ./devnet-data/region-1.toml --uses 5 --days 7
    Token {
        /// A region's configuration file (its certificate, key, CA and peers file are used).
        #[arg(long)]
        config: std::path::PathBuf,
        /// How many tokens.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Registrations each token allows (1: single use).
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Days each token is valid.
        #[arg(long, default_value_t = 7.0)]
        days: f64,
        /// Print one JSON object instead of the tokens.
        #[arg(long)]
        json: bool,
    },
    /// Generate a VAPID key pair for a region's `[push.webpush]` (WebPush, RFC 8292): writes
    /// the private key (PKCS#8 PEM, mode 0600) to OUT, which must not exist, and prints the
    /// public key, the `applicationServerKey` web clients subscribe with. Every region of a
    /// deployment may share one key, or each have its own (devices are told their region's).
    ///
    /// Example: relayd admin vapid-key --out /etc/relay/vapid.pem
    VapidKey {
        /// Where to write the private key.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Print one JSON object instead of the sentence.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an admin command.
pub fn run(command: AdminCommand) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match command {
        AdminCommand::CheckStore { data, json } => runtime.block_on(check(&data, json)),
        AdminCommand::RepairStore {
            data,
            devices,
            json,
        } => runtime.block_on(repair(&data, &devices, json)),
        AdminCommand::VapidKey { out, json } => vapid_key(&out, json),
        AdminCommand::Promote {
            standby_config,
            region_config,
            json,
        } => runtime.block_on(promote(&standby_config, &region_config, json)),
        AdminCommand::Failover {
            region,
            config,
            json,
        } => runtime.block_on(failover(region, &config, json)),
        AdminCommand::MoveHome {
            account,
            to,
            config,
            json,
        } => runtime.block_on(move_home(&account, to, &config, json)),
        AdminCommand::Token {
            config,
            count,
            uses,
            days,
            json,
        } => runtime.block_on(token(&config, count, uses, days, json)),
    }
}

async fn token(config: &Path, count: u32, uses: u32, days: f64, json: bool) -> Result<()> {
    if !(days.is_finite() && days > 0.0 && days <= 365.0) {
        return Err(anyhow!("--days must be more than 0 and at most 365"));
    }
    let config = home_region::config::RegionConfig::load(config)?;
    let issue = relay_proto::wire::IssueRegistrationTokens {
        count,
        uses,
        ttl_ms: (days * 24.0 * 3600.0 * 1000.0) as u64,
    };
    let issued = home_region::service::issue_registration_tokens(&config, issue)
        .await
        .context("asking the directory writer for tokens")?;
    if json {
        let line = serde_json::json!({
            "event": "tokens",
            "tokens": issued.tokens,
            "uses": issued.uses,
            "expires_at_ms": issued.expires_at_ms,
        });
        println!("{line}");
    } else {
        for token in &issued.tokens {
            println!("{token}");
        }
        eprintln!(
            "{} token(s), {} registration(s) each, valid for {days} day(s) (shown once: the \
             directory keeps only their SHA-256)",
            issued.tokens.len(),
            issued.uses,
        );
    }
    Ok(())
}

async fn failover(region: u32, config: &Path, json: bool) -> Result<()> {
    let config = home_region::config::RegionConfig::load(config)?;
    if config.region != region {
        return Err(anyhow!(
            "--region {region}, but the configuration is region {}'s",
            config.region
        ));
    }
    let handed = home_region::handover::request_handover(&config)
        .await
        .with_context(|| format!("handing region {region} over to its standby"))?;
    let address = home_region::config::PeersFile::load(&config.peers_file)?
        .address_of(region)
        .map(|address| address.to_string());
    if json {
        let line = serde_json::json!({
            "event": "failed_over",
            "region": handed.region,
            "epoch": handed.epoch,
            "version": handed.version,
            "held_ms": handed.held_ms,
            "address": address,
        });
        println!("{line}");
    } else {
        println!(
            "region {} failed over to its standby: epoch {}, at version {}, requests held for \
             {} ms; it serves at {}",
            handed.region,
            handed.epoch,
            handed.version,
            handed.held_ms,
            address.as_deref().unwrap_or("(not in the peers file)")
        );
        println!(
            "the old primary stopped (fenced); the region now ships to the standby its former \
             standby names in [promotion] standby, or runs alone"
        );
    }
    Ok(())
}

async fn move_home(account: &str, to: u32, config: &Path, json: bool) -> Result<()> {
    let config = home_region::config::RegionConfig::load(config)?;
    let moved = home_region::home_move::request_move_home(&config, account, to)
        .await
        .with_context(|| {
            format!(
                "moving the home of account {account} from region {} to region {to}",
                config.region
            )
        })?;
    if json {
        let line = serde_json::json!({
            "event": "home_moved",
            "account": moved.account.account,
            "name": moved.account.name,
            "from_region": moved.from_region,
            "to_region": moved.account.region,
            "epoch": moved.account.epoch,
            "keys": moved.keys,
            "queue_entries": moved.queue_entries,
            "log_entries": moved.log_entries,
            "chats": moved.chats,
            "parts": moved.parts,
            "held_ms": moved.held_ms,
        });
        println!("{line}");
    } else {
        println!(
            "account {} ({}) now lives in region {} (epoch {}), moved from region {}: {} keys, {} \
             queue entries with {} messages, {} chats, in {} parts; its requests were held for {} ms",
            moved.account.name,
            moved.account.account,
            moved.account.region,
            moved.account.epoch,
            moved.from_region,
            moved.keys,
            moved.queue_entries,
            moved.log_entries,
            moved.chats,
            moved.parts,
            moved.held_ms,
        );
    }
    Ok(())
}

async fn promote(standby_config: &Path, region_config: &Path, json: bool) -> Result<()> {
    let standby = relay_replica::StandbyConfig::load(standby_config)?;
    let region = home_region::config::RegionConfig::load(region_config)?;
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let promoted = home_region::promote::promote_standby(&standby, &region, now_secs).await?;
    if json {
        let mut line = serde_json::to_value(&promoted)?;
        line["event"] = "promoted".into();
        println!("{line}");
    } else {
        println!(
            "region {}'s store is now the standby's copy: store {}, version {}, {} keys, in {}",
            promoted.region,
            promoted.store_id,
            promoted.version,
            promoted.keys,
            promoted.data_dir.display()
        );
        if let Some(replaced) = &promoted.replaced {
            println!(
                "the region's previous folder was moved to {}",
                replaced.display()
            );
        }
        if promoted.blobs_carried_over {
            println!("its blobs were carried over");
        }
        println!(
            "start the region with its configuration; give it a new standby (a new folder gets \
             a full copy)"
        );
    }
    Ok(())
}

fn vapid_key(out: &Path, json: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = relay_push::generate_vapid_key().context("generating a VAPID key")?;
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "creating {} (an existing key is never replaced)",
                out.display()
            )
        })?;
    file.write_all(key.private_key_pem.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", out.display()))?;
    if json {
        let line = serde_json::json!({
            "event": "vapid_key",
            "private_key_file": out.display().to_string(),
            "public_key": key.public_key_base64url,
        });
        println!("{line}");
    } else {
        println!(
            "wrote the VAPID private key to {}\npublic key (applicationServerKey): {}",
            out.display(),
            key.public_key_base64url
        );
    }
    Ok(())
}

async fn check(data: &Path, json: bool) -> Result<()> {
    let checked = repair::check_offline(data).await?;
    if json {
        println!("{}", serde_json::to_string(&checked)?);
    } else {
        print!("{checked}");
    }
    Ok(checked.verdict()?)
}

async fn repair(data: &Path, devices: &[String], json: bool) -> Result<()> {
    let devices = devices
        .iter()
        .map(|text| {
            repair::parse_device(text)
                .ok_or_else(|| anyhow!("--device {text:?} is not ACCOUNT/DEVICE (e.g. 2/1)"))
        })
        .collect::<Result<Vec<_>>>()?;
    let repaired = repair::repair_offline(data, &devices, SystemClock.now_ms()).await?;
    if json {
        println!("{}", serde_json::to_string(&repaired)?);
    } else {
        print!("{repaired}");
    }
    Ok(repaired.verdict()?)
}
