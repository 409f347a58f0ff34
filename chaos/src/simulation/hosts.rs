//! What each simulated host runs, built again on every restart: a region ([`RegionSoftware`]),
//! a standby, an operator running a home move, an edge.

use super::*;

/// What a region host runs; called again on every restart.
#[derive(Clone)]
pub(super) struct RegionSoftware {
    pub(super) seed: u64,
    pub(super) region: u32,
    /// The host of the region's standby, if it has one.
    pub(super) standby: Option<String>,
    /// Every shipper a start of the region made, for the report.
    pub(super) shippers: Rc<RefCell<Vec<Arc<relay_replica::Shipper>>>>,
    /// How long the chat lanes hold an early envelope, in ms.
    pub(super) lane_hold_ms: u64,
    pub(super) disk: MemoryDisk,
    pub(super) store_faults: Option<FaultConfig>,
    pub(super) clock: SimClock,
    pub(super) net_faults: Arc<NetFaults>,
    pub(super) identity: relay_net::TlsIdentity,
    pub(super) roots: Arc<quinn::rustls::RootCertStore>,
    /// Where each region is served now.
    pub(super) serving: Serving,
    /// Regions may move to their standbys' hosts in this run: connections to one that moved
    /// are closed.
    pub(super) follow_moves: bool,
    /// Set when this region's standby took over and this primary heard it: a fenced region
    /// is never started again (as a devnet does not restart one).
    pub(super) fenced: Rc<Cell<bool>>,
    pub(super) shared: Rc<RefCell<Shared>>,
    /// How many times this host has started.
    pub(super) starts: Rc<Cell<u64>>,
    pub(super) packets: PacketLog,
}

impl RegionSoftware {
    pub(super) async fn run(self) -> turmoil::Result {
        if self.fenced.get() {
            return Ok(());
        }
        let incarnation = next_incarnation(
            &self.starts,
            self.seed,
            "region",
            u64::from(self.region) << 32,
        );
        let shipper = match &self.standby {
            Some(host) => {
                let standby = SocketAddr::new(turmoil::lookup(host.as_str()), STANDBY_PORT);
                Some(relay_replica::Shipper::new(
                    self.region,
                    relay_replica::ReplicationConfig::new(standby),
                )?)
            }
            None => None,
        };
        let db = self.open(incarnation, shipper.clone())?;
        let sockets = SimSockets::new(incarnation)
            .with_log(self.packets.clone())
            .with_faults(self.net_faults.clone());
        if let Some(shipper) = &shipper {
            self.shippers.borrow_mut().push(shipper.clone());
            shipper.start_on(
                &sockets,
                db.clone(),
                any_address(SHIPPER_PORT),
                self.roots.clone(),
                self.identity.clone(),
            )?;
        }
        let service = self.serve(db, &sockets, incarnation, shipper)?;
        // Fenced (its standby took over), the service stops: it is never started again.
        let epoch = match service.run(std::future::pending()).await {
            Err(home_region::RegionError::Fenced { epoch, .. }) => epoch,
            Err(error) => return Err(error.into()),
            Ok(()) => return Ok(()),
        };
        self.fenced.set(true);
        self.shared.borrow_mut().record(What::FaultEnded {
            kind: FaultKind::Failover,
            label: format!(
                "{}'s old primary heard its standby took over (epoch {}) and stopped",
                region_host(self.region),
                epoch
            ),
        });
        Ok(())
    }

    /// The region's store on its disk, shipping to `shipper` if it has one.
    fn open(
        &self,
        incarnation: u64,
        shipper: Option<Arc<relay_replica::Shipper>>,
    ) -> Result<Database, fdb_layers::StoreError> {
        let faults = self.store_faults.clone().map(|faults| FaultConfig {
            seed: seed::mix(faults.seed, incarnation),
            ..faults
        });
        Database::memory(MemoryOptions {
            faults,
            disk: self.disk.clone(),
            replication: shipper.map(|shipper| shipper as Arc<dyn fdb_layers::ReplicationSink>),
        })
    }

    /// The region's service on `db`, bound on this host's region port.
    fn serve(
        &self,
        db: Database,
        sockets: &SimSockets,
        incarnation: u64,
        shipper: Option<Arc<relay_replica::Shipper>>,
    ) -> Result<RegionService, home_region::RegionError> {
        // Blob units live in the region's store, as a devnet with standbys keeps them: they
        // survive a crash as files with fsync do, and a standby holds them.
        let blob_objects =
            home_region::blob_objects::StoreObjects::new(db.clone(), Arc::new(self.clock));
        let (service, _) = RegionService::new(RegionParts {
            region: RegionId(self.region),
            directory_writer: RegionId(DIRECTORY_WRITER),
            listen: any_address(REGION_PORT),
            db,
            sockets,
            identity: self.identity.clone(),
            roots: self.roots.clone(),
            peers: serving_resolver(&self.serving),
            clock: Arc::new(self.clock),
            boot_nonce: seed::split_mix(incarnation),
            blob_objects,
            blob_limits: home_region::blobs::BlobLimits::default(),
            served_before: incarnation > 0,
            push: None,
            tokens_required: false,
            replication: shipper,
            follow_peer_moves: self.follow_moves,
            media: None,
        })?;
        service.set_lane_hold_ms(self.lane_hold_ms);
        Ok(service)
    }
}

/// What a standby host runs; called again on every restart. Its copy is on its own disk,
/// which survives a crash as a file would.
#[derive(Clone)]
pub(super) struct StandbySoftware {
    pub(super) seed: u64,
    pub(super) region: u32,
    pub(super) disk: MemoryDisk,
    pub(super) net_faults: Arc<NetFaults>,
    /// The region's own certificate: the standby serves with it and accepts only it.
    pub(super) identity: relay_net::TlsIdentity,
    pub(super) roots: Arc<quinn::rustls::RootCertStore>,
    pub(super) starts: Rc<Cell<u64>>,
    pub(super) packets: PacketLog,
    /// (Runs with failovers) the region as it would run on this host, on the copy: the
    /// standby takes over once its primary's lease expires.
    pub(super) promotion: Option<RegionSoftware>,
    /// The failover epoch it was promoted at (0: not promoted): started again, it serves as
    /// the region.
    pub(super) promoted: Rc<Cell<u64>>,
}

impl StandbySoftware {
    /// The standby server's parts on this host.
    fn parts<'a>(&self, sockets: &'a SimSockets) -> relay_replica::MemoryStandby<'a> {
        relay_replica::MemoryStandby {
            region: self.region,
            disk: self.disk.clone(),
            listen: any_address(STANDBY_PORT),
            identity: self.identity.clone(),
            roots: self.roots.clone(),
            sockets,
            can_promote: self.promotion.is_some(),
        }
    }

    pub(super) async fn run(self) -> turmoil::Result {
        let incarnation = next_incarnation(
            &self.starts,
            self.seed,
            "standby",
            u64::from(self.region) << 32,
        );
        let sockets = SimSockets::new(incarnation)
            .with_log(self.packets.clone())
            .with_faults(self.net_faults.clone());
        if let (Some(region), epoch @ 1..) = (&self.promotion, self.promoted.get()) {
            // Promoted before this start: the copy is the region's store.
            tracing::warn!(
                region = self.region,
                epoch,
                "serving as the region again (promoted before)"
            );
            // As a devnet's restarted standby does, it also tells an old primary that dials it
            // that it is fenced.
            let (fencing, _) =
                relay_replica::StandbyServer::on_memory_promoted(self.parts(&sockets), epoch)?;
            tokio::spawn(fencing.run(std::future::pending()));
            let db = region.open(incarnation, None)?;
            region
                .serve(db, &sockets, incarnation, None)?
                .run(std::future::pending())
                .await?;
            return Ok(());
        }
        let (server, _) = relay_replica::StandbyServer::on_memory(self.parts(&sockets))?;
        let Some(region) = &self.promotion else {
            server.run(std::future::pending()).await;
            return Ok(());
        };
        let handle = server.handle();
        // The server stays up after a promotion: it tells the old primary it is fenced.
        tokio::spawn(server.run(std::future::pending()));
        let lease = Duration::from_millis(relay_replica::limits::LEASE_MS_DEFAULT);
        loop {
            tokio::time::sleep(Duration::from_millis(
                relay_replica::limits::LEASE_CHECK_INTERVAL_MS,
            ))
            .await;
            if handle.lease_expired(lease) {
                break;
            }
        }
        let Some(relay_replica::CopyAt::Memory(disk)) = handle.release_copy() else {
            return Err("the standby's copy is not on its memory disk".into());
        };
        let region = RegionSoftware {
            disk,
            ..region.clone()
        };
        let db = region.open(incarnation, None)?;
        // A disk failing the epoch's commit fails the promotion of a standby process, whose
        // supervisor starts it again: here it tries again.
        let mut attempts = 0;
        let epoch = loop {
            let raised = db
                .transact(|transaction| async move {
                    fdb_layers::store_identity::raise_failover_epoch(&transaction).await
                })
                .await;
            match raised {
                Ok(epoch) => break epoch,
                Err(fdb_layers::StoreError::Unavailable(_))
                    if attempts < PROMOTION_ATTEMPTS_MAX =>
                {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(OPERATOR_POLL_MS)).await;
                }
                Err(error) => return Err(error.into()),
            }
        };
        let service = region.serve(db, &sockets, incarnation, None)?;
        let host = standby_host(self.region);
        if let Ok(mut serving) = region.serving.lock() {
            serving.insert(self.region, host.clone());
        }
        self.promoted.set(epoch);
        handle.promoted(epoch);
        region.shared.borrow_mut().record(What::FaultStarted {
            kind: FaultKind::Failover,
            label: format!(
                "{host} took over as region {} (epoch {epoch}): its primary's lease expired",
                self.region
            ),
        });
        service.run(std::future::pending()).await?;
        Ok(())
    }
}

/// An operator moving a client's account home (`relayd admin move-home`): at `at_ms`, asks the
/// account's home region, with that region's own certificate, to move it to region `to`, and
/// records what the region answered.
pub(super) struct Operator {
    pub(super) seed: u64,
    pub(super) at_ms: u64,
    /// The clients of the run, and when waiting for them ends.
    pub(super) clients: usize,
    pub(super) give_up_ms: u64,
    pub(super) client: u32,
    pub(super) from: u32,
    pub(super) to: u32,
    pub(super) label: String,
    pub(super) identity: relay_net::TlsIdentity,
    pub(super) roots: Arc<quinn::rustls::RootCertStore>,
    pub(super) serving: Serving,
    pub(super) packets: PacketLog,
    pub(super) net_faults: Arc<NetFaults>,
    pub(super) shared: Rc<RefCell<Shared>>,
}

impl Operator {
    pub(super) async fn run(self) -> turmoil::Result {
        // Once every client registered and linked its devices (a pairing stays where it was
        // opened, so a link under way when its account moves is refused), at its time.
        loop {
            let ready = {
                let shared = self.shared.borrow();
                shared.progress.ready.len() >= self.clients
            };
            if ready || crate::time::sim_elapsed_ms() >= self.give_up_ms {
                break;
            }
            tokio::time::sleep(Duration::from_millis(OPERATOR_POLL_MS)).await;
        }
        let now = crate::time::sim_elapsed_ms();
        if now < self.at_ms {
            tokio::time::sleep(Duration::from_millis(self.at_ms - now)).await;
        }
        let sockets = SimSockets::new(self.seed)
            .with_log(self.packets.clone())
            .with_faults(self.net_faults.clone());
        let endpoint = relay_net::bind_endpoint(&sockets, any_address(OPERATOR_PORT), None)?;
        let client = relay_net::client_config(
            self.roots.clone(),
            Some(self.identity.clone()),
            relay_net::ALPN_INTERNAL,
        )?;
        let peers = serving_resolver(&self.serving);
        let links = relay_net::PeerLinks::new(
            endpoint.clone(),
            client,
            relay_net::REGION_SERVER_NAME,
            peers,
        );
        let outcome =
            tokio::time::timeout(Duration::from_millis(OPERATOR_TIMEOUT_MS), self.ask(&links))
                .await
                .unwrap_or_else(|_| Err("no answer in time".into()));
        endpoint.close(0u32.into(), b"done");
        let label = match outcome {
            Ok(moved) => format!(
                "{}: moved (epoch {}, {} queue entries, held {} ms)",
                self.label, moved.account.epoch, moved.queue_entries, moved.held_ms
            ),
            Err(error) => format!("{}: not moved ({error})", self.label),
        };
        self.shared.borrow_mut().record(What::FaultStarted {
            kind: FaultKind::HomeMove,
            label,
        });
        Ok(())
    }

    /// Looks the account up by name at its home, then asks for the move.
    async fn ask(
        &self,
        links: &relay_net::PeerLinks,
    ) -> Result<relay_proto::wire::HomeMoved, String> {
        use relay_proto::wire::{
            self, RegionRequest, RegionResponse, region_request, region_response,
        };
        let timeout = Duration::from_millis(OPERATOR_TIMEOUT_MS);
        let ask = async |body| -> Result<region_response::Body, String> {
            let request = RegionRequest { body: Some(body) };
            let answer: RegionResponse = links
                .request(self.from, &request, timeout)
                .await
                .map_err(|error| error.to_string())?;
            match answer.body {
                Some(region_response::Body::Error(error)) => Err(error.message),
                Some(body) => Ok(body),
                None => Err("an empty answer".into()),
            }
        };
        let name = history::client_name(self.client);
        let account = match ask(region_request::Body::LookupName(wire::LookupName { name })).await?
        {
            region_response::Body::Account(info) => info.account,
            _ => return Err("an unexpected answer to a lookup".into()),
        };
        let body = region_request::Body::MoveHome(wire::MoveHome {
            account,
            to_region: self.to,
        });
        match ask(body).await? {
            region_response::Body::HomeMoved(moved) => Ok(moved),
            _ => Err("an unexpected answer to a move".into()),
        }
    }
}

/// What an edge host runs.
#[derive(Clone)]
pub(super) struct EdgeSoftware {
    pub(super) seed: u64,
    pub(super) region: u32,
    /// The edge's number in its region, from 1.
    pub(super) edge: u32,
    pub(super) limits: SessionLimits,
    pub(super) clock: SimClock,
    pub(super) net_faults: Arc<NetFaults>,
    pub(super) identity: relay_net::TlsIdentity,
    pub(super) roots: Arc<quinn::rustls::RootCertStore>,
    /// Where each region is served now.
    pub(super) serving: Serving,
    /// Regions may move to their standbys' hosts in this run: the edge follows `serving`.
    pub(super) follow_moves: bool,
    pub(super) starts: Rc<Cell<u64>>,
    pub(super) packets: PacketLog,
}

impl EdgeSoftware {
    pub(super) async fn run(self) -> turmoil::Result {
        let incarnation = next_incarnation(
            &self.starts,
            self.seed,
            "edge",
            u64::from(self.region) << 48 | u64::from(self.edge) << 32,
        );
        let resolve = serving_resolver(&self.serving);
        let listed: Vec<u32> = self
            .serving
            .lock()
            .map(|serving| serving.keys().copied().collect())
            .unwrap_or_default();
        let regions = listed
            .into_iter()
            .filter_map(|region| Some((RegionId(region), resolve(region)?)))
            .collect();
        let sockets = SimSockets::new(incarnation)
            .with_log(self.packets)
            .with_faults(self.net_faults);
        let (service, _, subscriptions) = EdgeService::new(EdgeParts {
            region: RegionId(self.region),
            listen: any_address(EDGE_PORT),
            internal_listen: any_address(EDGE_INTERNAL_PORT),
            limits: self.limits,
            device_sockets: &sockets,
            internal_sockets: &sockets,
            identity: self.identity,
            roots: self.roots,
            regions,
            moving_peers: self.follow_moves.then(|| serving_resolver(&self.serving)),
            clock: Arc::new(self.clock),
            nonces: Arc::new(SeededNonces::new(seed::split_mix(incarnation))),
        })?;
        service.run(subscriptions, std::future::pending()).await?;
        Ok(())
    }
}
