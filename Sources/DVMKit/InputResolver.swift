import AsyncHTTPClient
import Foundation
public import Logging
import NostrCore
import NostrCrypto
public import NostrRelay
import NIOCore
import NIOPosix

/// Turns a request's inputs into content: `text` as is, `url` fetched over HTTP(S), `event` fetched from the
/// service's relays and the input's relay hint, `job` awaited (that job's result, by a provider it was
/// addressed to, or by anyone if it was addressed to no one).
///
/// A requester chooses the URLs and relay hints, so fetching is bounded: size and time caps, at most
/// ``Configuration/maximumHintRelays`` hint relays connected at a time, and — unless
/// ``Configuration/allowsPrivateAddresses`` — no URL or relay whose host is a loopback, private or
/// link-local address (checked on every redirect hop). A URL's host is looked up once per hop and the
/// connection goes to the address that was checked, so a DNS answer that changes in between (rebinding) cannot
/// lead it elsewhere.
public final class InputResolver: Sendable {
    public struct Configuration: Sendable {
        /// The most bytes a `url` input may have.
        public var maximumURLSize = 512 * 1024
        /// How long fetching one URL may take.
        public var urlTimeout: Duration = .seconds(15)
        /// Redirects followed per URL.
        public var maximumRedirects = 3
        /// How long an `event` input is looked for.
        public var eventTimeout: Duration = .seconds(5)
        /// How long a `job` input's result is waited for.
        public var jobTimeout: Duration = .seconds(300)
        /// Relay hints connected at once (the least recently used closed first).
        public var maximumHintRelays = 8
        /// Whether URLs and relay hints may point at loopback, private and link-local addresses (development).
        public var allowsPrivateAddresses = false

        public init() {}
    }

    public let configuration: Configuration
    /// The threads URL inputs' names are looked up on.
    private static let urlLookups: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 4)
        pool.start()
        return pool
    }()
    /// The connections to relay hints (run alongside the service: ``run()``).
    let hints: OnDemandRelays
    private let logger: Logger
    /// The addresses a host name resolves to (the system's resolver; tests give their own).
    private let lookup: @Sendable (String) -> [[UInt8]]

    public convenience init(configuration: Configuration = Configuration(), logger: Logger) {
        self.init(configuration: configuration, logger: logger, lookup: AddressPolicy.resolve)
    }

    init(configuration: Configuration, logger: Logger, lookup: @escaping @Sendable (String) -> [[UInt8]]) {
        self.configuration = configuration
        self.logger = logger
        self.lookup = lookup
        // Jobs in flight may still fetch inputs while the host winds down: the host cancels ``run()`` after them.
        var hints = RelayPool.Configuration()
        hints.stopsOnGracefulShutdown = false
        hints.refusesPrivateAddresses = !configuration.allowsPrivateAddresses
        self.hints = OnDemandRelays(capacity: configuration.maximumHintRelays, configuration: hints, logger: logger, lookup: lookup)
    }

    /// Keeps the hint relays' connections until cancelled (graceful shutdown does not end it).
    public func run() async throws {
        try await hints.pool.withRunning {
            while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
        }
    }

    /// Resolves every input of `request` with `pool` (the service's relays); the first failure throws
    /// ``JobError`` naming the input.
    public func resolve(_ request: JobRequest, pool: RelayPool) async throws -> [ResolvedInput] {
        var resolved: [ResolvedInput] = []
        for (index, input) in request.inputs.enumerated() {
            do {
                resolved.append(try await resolve(input, pool: pool))
            } catch let error as JobError {
                throw JobError("input \(index + 1) (\(input.type.rawValue)): \(error.reason)")
            }
        }
        return resolved
    }

    func resolve(_ input: JobInput, pool: RelayPool) async throws -> ResolvedInput {
        switch input.type {
        case .text:
            return ResolvedInput(input: input, content: input.data)
        case .url:
            return ResolvedInput(input: input, content: try await fetch(url: input.data))
        case .event:
            let event = try await event(input, pool: pool)
            return ResolvedInput(input: input, content: event.content, event: event)
        case .job:
            let result = try await jobResult(input, pool: pool)
            return ResolvedInput(input: input, content: result.content, event: result)
        }
    }

    // MARK: URLs

    func fetch(url text: String) async throws -> String {
        var current = text
        for _ in 0...configuration.maximumRedirects {
            guard let url = URL(string: current), let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https",
                let host = url.host, !host.isEmpty
            else { throw JobError("not an http(s) URL") }
            switch try await fetchOnce(current, host: host, at: try await checkedAddresses(host)) {
            case .redirect(let location):
                guard let next = URL(string: location, relativeTo: url)?.absoluteString else { throw JobError("a redirect to an invalid URL") }
                current = next
            case .body(let body):
                return String(decoding: body, as: UTF8.self)
            }
        }
        throw JobError("more than \(configuration.maximumRedirects) redirects")
    }

    private enum Fetched {
        case redirect(String)
        case body([UInt8])
    }

    /// One hop: a GET of `url` over a connection to the first of `addresses` (checked addresses of `host`;
    /// TLS still verifies the certificate for `host`), and if that cannot be fetched, to the next one (the
    /// first address of the other family, as a dual-stack host without a route for one family needs).
    private func fetchOnce(_ url: String, host: String, at addresses: [String]) async throws -> Fetched {
        var failure = JobError("the host does not resolve")
        for address in addresses {
            do {
                return try await fetchOnce(url, host: host, at: address)
            } catch let error as Unreachable {
                failure = error.error
            }
        }
        throw failure
    }

    /// A hop whose request could not be made or answered at that address.
    private struct Unreachable: Error {
        let error: JobError
    }

    /// One hop over a connection to `address`, with a client of its own that is shut down before it returns.
    private func fetchOnce(_ url: String, host: String, at address: String) async throws -> Fetched {
        var settings = HTTPClient.Configuration()
        // Redirects are followed by hand, so that every hop's host is checked.
        settings.redirectConfiguration = .disallow
        settings.timeout = .init(connect: .seconds(5), read: .seconds(10))
        settings.dnsOverride = [host: address]
        let client = HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: settings)
        do {
            let fetched = try await fetchOnce(url, with: client)
            try? await client.shutdown()
            return fetched
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    private func fetchOnce(_ url: String, with client: HTTPClient) async throws -> Fetched {
        var request = HTTPClientRequest(url: url)
        request.method = .GET
        let response: HTTPClientResponse
        do {
            response = try await client.execute(request, timeout: .init(configuration.urlTimeout))
        } catch {
            throw Unreachable(error: JobError("could not fetch the URL (\(Self.shortReason(error)))"))
        }
        if (300..<400).contains(response.status.code), let location = response.headers.first(name: "location") {
            return .redirect(location)
        }
        guard response.status.code == 200 else { throw JobError("the server answered \(response.status.code)") }
        var body: [UInt8] = []
        do {
            for try await chunk in response.body {
                guard body.count + chunk.readableBytes <= configuration.maximumURLSize else {
                    throw JobError("larger than \(configuration.maximumURLSize) bytes")
                }
                body.append(contentsOf: chunk.readableBytesView)
            }
        } catch let error as JobError {
            throw error
        } catch {
            throw JobError("the download failed (\(Self.shortReason(error)))")
        }
        return .body(body)
    }

    static func shortReason(_ error: any Error) -> String {
        String(String(describing: error).prefix(80))
    }

    /// Looks `host` up once and returns the addresses to connect to: the first answer (in the system's order
    /// of preference) and, if there is one, the first of the other address family. Throws if it does not
    /// resolve, or — unless private addresses are allowed — if any address it resolves to is private.
    func checkedAddresses(_ host: String) async throws -> [String] {
        // On threads of their own, for at most 5 s: a URL whose name's servers do not answer neither outlasts
        // the fetch's time limit nor holds up the relay address checks (or NIO's file I/O).
        let addresses: [[UInt8]]
        do {
            addresses = try await AddressPolicy.addresses(of: host, on: Self.urlLookups, lookup: lookup)
        } catch let refusal as AddressPolicy.Refusal {
            throw JobError(refusal.description)
        }
        guard let first = addresses.first else { throw JobError("the host does not resolve") }
        if !configuration.allowsPrivateAddresses && addresses.contains(where: AddressPolicy.isPrivate) {
            throw JobError("the host is a private address (not fetched)")
        }
        let other = addresses.first { $0.count != first.count }
        return ([first] + (other.map { [$0] } ?? [])).compactMap(AddressPolicy.text)
    }

    // MARK: Events

    func event(_ input: JobInput, pool: RelayPool) async throws -> Event {
        let id = try EventID(hex: input.data)
        let filter = Filter(ids: [id])
        if let found = (try? await pool.fetch([filter], timeout: configuration.eventTimeout))?.first(where: { $0.id == id }) {
            return found
        }
        let lease = await takeHint(input.relay, pool: pool)
        defer { hints.release(lease) }
        if let hint = lease.taken.first {
            if let found = (try? await hints.pool.fetch([filter], from: [hint], timeout: configuration.eventTimeout))?.first(where: { $0.id == id }) {
                return found
            }
        }
        throw JobError("event \(id.hex.prefix(16))… not found")
    }

    /// Waits for a result (kind 6000–6999) of job `input.data`, on the service's relays and the hint.
    func jobResult(_ input: JobInput, pool: RelayPool) async throws -> Event {
        let id = try EventID(hex: input.data)
        let filter = Filter(tags: ["e": [id.hex]])
        let lease = await takeHint(input.relay, pool: pool)
        defer { hints.release(lease) }
        let hint = lease.taken.first
        let deadline = ContinuousClock.now + configuration.jobTimeout
        let lookup = configuration.eventTimeout
        let found: Event? = try await withThrowingTaskGroup(of: Event?.self) { group in
            group.addTask { try await Self.firstResult(of: id, in: pool, filter: filter, relays: nil, until: deadline, lookup: lookup) }
            if let hint {
                group.addTask {
                    try await Self.firstResult(of: id, in: self.hints.pool, filter: filter, relays: [hint], until: deadline, lookup: lookup)
                }
            }
            defer { group.cancelAll() }
            for try await result in group {
                if let result { return result }
            }
            return nil
        }
        guard let found else { throw JobError("no result for job \(id.hex.prefix(16))… within \(configuration.jobTimeout)") }
        return found
    }

    /// The first result of job `id` on `relays` of `pool` (all when nil) that ``answers(_:job:request:)`` the
    /// job: anyone can publish an event that `e`-tags it. The job's request is read from a candidate's
    /// `request` tag, else looked up on the same relays (for at most `lookup`) once a candidate arrives, since a
    /// chained job may be waiting before the job it chains on was even published.
    private static func firstResult(
        of id: EventID, in pool: RelayPool, filter: Filter, relays: [RelayURL]?, until deadline: ContinuousClock.Instant,
        lookup: Duration
    ) async throws -> Event? {
        var request: Event?
        var lastLookup: ContinuousClock.Instant?
        return try await pool.withSubscription([filter], on: relays) { subscription in
            let timer = Deadlines.shared.schedule(at: deadline) { subscription.stop() }
            defer { Deadlines.shared.cancel(timer) }
            for await item in subscription {
                if Task.isCancelled { return nil }
                guard case .event(let event, _) = item, (6_000..<7_000).contains(event.kind.rawValue),
                    event.tags.contains(where: { $0.name == "e" && $0.value == id.hex })
                else { continue }
                if let embedded = embeddedRequest(of: event, job: id) {
                    if answers(event, job: id, request: embedded) { return event }
                    continue
                }
                // Looked up at most once per `lookup`: a stream of results nobody asked for cannot hold the wait
                // in lookups.
                if request == nil, lastLookup.map({ ContinuousClock.now - $0 >= lookup }) ?? true {
                    lastLookup = .now
                    request = (try? await pool.fetch([Filter(ids: [id])], from: relays, timeout: lookup))?.first { $0.id == id }
                }
                if answers(event, job: id, request: request) { return event }
            }
            return nil
        }
    }

    /// Whether `result` answers job `id` as the job's `request` allows: of the request's kind + 1000 and, when
    /// the request names providers (`p` tags), by one of them. Without the request, nothing answers it.
    static func answers(_ result: Event, job id: EventID, request: Event?) -> Bool {
        guard let request, request.id == id, result.kind.rawValue == request.kind.rawValue + 1_000 else { return false }
        let providers = request.tagValues("p")
        return providers.isEmpty || providers.contains(result.pubkey.hex)
    }

    /// The job's request as `result`'s `request` tag carries it, if its content hashes to the job's id (so
    /// it is the request, whoever copied it; its signature is not needed for that).
    static func embeddedRequest(of result: Event, job id: EventID) -> Event? {
        guard let text = result.firstTagValue("request"), let request = try? Event(json: text),
            Event.computeID(pubkey: request.pubkey, createdAt: request.createdAt, kind: request.kind, tags: request.tags, content: request.content) == id
        else { return nil }
        return request
    }

    /// Takes the hint relay to ask, held until the lease is released; nothing to ask when there is no hint, it
    /// is one of the service's own, its address is refused, or every hint relay connected is in use and there
    /// is no room for another.
    private func takeHint(_ hint: String?, pool: RelayPool) async -> OnDemandRelays.Lease {
        guard let hint, let url = try? RelayURL(hint), !pool.relays.contains(url) else { return OnDemandRelays.Lease() }
        let lease = await hints.take([url])
        if let reason = lease.refused[url] {
            logger.debug("relay hint not used", metadata: ["relay": "\(url.string)", "reason": "\(reason)"])
        } else if !lease.full.isEmpty {
            logger.debug("relay hint not used: every hint relay connected is in use", metadata: ["relay": "\(url.string)"])
        }
        return lease
    }
}
