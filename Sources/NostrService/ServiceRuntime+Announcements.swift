import Logging
import NostrCore
public import NostrRelay

/// Announcements and relay changes: the service's relay list (kind 10002) and its handlers' announcements,
/// published on start, periodically and when the relays change.
extension ServiceRuntime {
    /// The relays the service listens on and answers through.
    public var relays: [RelayURL] { listener.relays }

    /// Whether the last announcement round was confirmed: every announcement accepted by at least one relay.
    public var isAnnounced: Bool { state.withLock { $0.announced } }

    /// Moves the service to `relays` while it runs: it listens on the new ones (from its catch-up point), stops
    /// listening on those no longer listed, and announces again to the old and the new relays, so whoever
    /// looks where the service was finds where it is now. The old relays stay connected for publishing until
    /// that announcement round is done.
    public func setRelays(_ relays: [RelayURL]) {
        let new = Set(relays)
        let (old, added) = relayChanges.withLock { _ in
            let old = Set(listener.relays)
            for url in new.subtracting(old) {
                listener.add(url)
                pool.add(url)
            }
            for url in old.subtracting(new) { listener.remove(url) }
            state.withLock { $0.formerRelays.formUnion(old.subtracting(new)) }
            return (old, new.subtracting(old))
        }
        guard new != old else { return }
        logger.info("relays changed", metadata: [
            "added": "\(added.map(\.string).sorted())", "removed": "\(old.subtracting(new).map(\.string).sorted())",
        ])
        announcementSignal.continuation.yield()
    }

    /// Publishes the announcements again now (after what they say has changed).
    public func announce() {
        announcementSignal.continuation.yield()
    }

    /// Publishes the announcements each time the signal fires (start, timer, relay change), once the relays
    /// listen (or after ``Configuration/listenTimeout``): an announcement tells clients to send requests.
    func announceWhenAsked() async {
        for await _ in announcementSignal.stream {
            _ = await waitUntilListening(timeout: configuration.listenTimeout)
            if Task.isCancelled { return }
            let former = state.withLock { state in
                defer { state.formerRelays = [] }
                return state.formerRelays
            }
            let confirmed = await announce(alsoTo: former)
            state.withLock { $0.announced = confirmed }
            // The former relays were the operator's, so they were announced to through the service's own
            // connections, not the checked ones for relays that requesters name; now they can go.
            relayChanges.withLock { _ in
                let listening = Set(listener.relays)
                let stillFormer = state.withLock(\.formerRelays)
                for url in former where !listening.contains(url) && !stillFormer.contains(url) { pool.remove(url) }
            }
        }
    }

    /// Fires the signal every ``Configuration/announcementInterval``, or sooner after an unconfirmed round.
    func askForAnnouncementsPeriodically() async {
        while !Task.isCancelled {
            let wait = isAnnounced ? configuration.announcementInterval : min(configuration.announcementInterval, configuration.announcementRetryDelay)
            try? await Task.sleep(for: wait)
            if Task.isCancelled { return }
            announcementSignal.continuation.yield()
        }
    }

    /// One round: for every key, the relay list and each handler's announcements, signed and published to the
    /// service's relays (and `former` ones). True when every event was accepted by at least one relay.
    func announce(alsoTo former: Set<RelayURL>) async -> Bool {
        let relays = listener.relays
        let targets = Set(relays).union(former)
        guard !targets.isEmpty else { return false }
        let now = state.withLock { state in
            state.lastAnnouncementTime = max(Timestamp.now, state.lastAnnouncementTime + 1)
            return state.lastAnnouncementTime
        }
        let context = { key in
            AnnouncementContext(
                key: key, relays: relays, now: now,
                nextAnnouncement: now + Int64(self.configuration.announcementInterval.components.seconds), pool: self.pool)
        }
        var confirmed = true
        let keyring = keyring.withLock { $0 }
        for publicKey in keyring.order where !keyring.unannounced.contains(publicKey) {
            guard let key = keyring.byKey[publicKey] else { continue }
            var templates: [EventTemplate] = []
            if configuration.announcesRelayList {
                templates.append(EventTemplate(kind: .relayList, tags: relays.map { ["r", $0.string] }, createdAt: now))
            }
            for handler in handlerList {
                do {
                    templates += try await handler.announcements(context(publicKey))
                } catch {
                    confirmed = false
                    logger.error("a handler could not make its announcements", metadata: ["error": "\(error)"])
                }
            }
            for template in templates {
                let event: Event
                do {
                    event = try await key.sign(template)
                } catch {
                    confirmed = false
                    logger.error("could not sign an announcement", metadata: ["error": "\(error)"])
                    continue
                }
                let results = await publishConfirmed(event, to: targets)
                let accepted = results.values.filter(\.isAccepted).count
                metrics.announcementPublished(kind: "\(event.kind.rawValue)", accepted: accepted > 0)
                let metadata: Logger.Metadata = [
                    "nostr.kind": "\(event.kind.rawValue)", "nostr.pubkey": "\(publicKey.hex)",
                    "accepted": "\(accepted) of \(results.count)",
                ]
                if accepted == 0 {
                    confirmed = false
                    var detailed = metadata
                    detailed["results"] = "\(results.map { "\($0.key.string): \($0.value)" }.sorted().joined(separator: ", "))"
                    logger.warning("no relay accepted an announcement", metadata: detailed)
                } else {
                    logger.info("announced", metadata: metadata)
                }
            }
        }
        return confirmed
    }
}
