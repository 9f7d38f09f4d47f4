import Foundation
public import Logging
public import NostrCore
public import NostrCrypto
import NostrRelay
import Synchronization

/// A NIP-46 client: talks to a remote signer named by a `bunker://` URI, over the URI's relays.
///
/// ```swift
/// let client = NIP46Client(uri: try BunkerURI(text))
/// let note = try await client.run { signer in
///     try await signer.connect()
///     return try await signer.sign(EventTemplate(kind: .textNote, content: "hello"))
/// }
/// ```
///
/// Every call waits for the response with its id. An `auth_url` challenge is reported to ``onAuthChallenge``
/// and the call keeps waiting: the signer sends the real response, with the same id, once the challenge is
/// settled.
public struct NIP46Client: Sendable {
    public let uri: BunkerURI
    /// The client's own key (what the remote signer knows the client by).
    public let key: SecretKey
    /// How long a call waits for its response (an auth challenge included).
    public var timeout: Duration = .seconds(30)
    /// The scheme requests are encrypted with; NIP-44 unless talking to an old signer.
    public var encryption: Encryption = .nip44
    /// Called with the URL of each auth challenge (for a person to open).
    public var onAuthChallenge: @Sendable (_ url: String) -> Void = { _ in }
    let logger: Logger

    public enum Encryption: Sendable { case nip44, nip04 }

    public init(uri: BunkerURI, key: SecretKey = .generate(), logger: Logger = Logger(label: "nip46") { _ in SwiftLogNoOpLogHandler() }) {
        self.uri = uri
        self.key = key
        self.logger = logger
    }

    /// Connects to the URI's relays, listens for the signer's responses, and runs `body` with a session.
    public func run<Result: Sendable>(_ body: (Session) async throws -> Result) async throws -> Result {
        // Relays that show p-tagged events only to their recipient (NIP-42) get AUTH as the client key.
        let pool = RelayPool(relays: uri.relays, signer: KeySigner(key), logger: logger)
        return try await pool.withRunning {
            let filter = Filter(
                authors: [uri.signer], kinds: [NIP46.kind], tags: ["p": [key.publicKey.hex]],
                since: Timestamp.now - 60)
            return try await pool.withSubscription([filter]) { responses in
                let session = Session(client: self, pool: pool)
                return try await withThrowingTaskGroup(of: Result?.self) { group in
                    group.addTask {
                        await session.dispatch(responses)
                        return nil
                    }
                    defer { group.cancelAll() }
                    return try await body(session)
                }
            }
        }
    }

    /// One conversation with the signer: requests out, responses matched to them by id.
    public final class Session: Sendable {
        let client: NIP46Client
        let pool: RelayPool
        private let waiting = Mutex<[String: AsyncStream<NIP46.Response>.Continuation]>([:])

        init(client: NIP46Client, pool: RelayPool) {
            self.client = client
            self.pool = pool
        }

        /// Sends `method` with `params` and returns the result; an error response throws ``NIP46Error``.
        public func call(_ method: String, _ params: [String] = []) async throws -> String {
            let request = NIP46.Request(id: Hex.encode(SecureMemory.randomBytes(16)), method: method, params: params)
            let event = try self.event(for: request)
            let responses = self.responses(to: request.id)
            defer { forget(request.id) }
            let results = await pool.publish(event)
            guard results.values.contains(where: \.isAccepted) else {
                throw NIP46Error.unreachable(results.map { "\($0.key): \($0.value)" }.sorted().joined(separator: "; "))
            }
            // One shared timer, not a sleeping task per call: a cancelled sleep would hold its timer until the
            // deadline, which adds up for a client making many calls.
            let timer = Deadlines.shared.schedule(at: .now + client.timeout) { [weak self] in self?.forget(request.id) }
            for await response in responses {
                if response.result == "auth_url", let url = response.error {
                    client.onAuthChallenge(url)
                    continue
                }
                Deadlines.shared.cancel(timer)
                if let error = response.error { throw NIP46Error.refused(error) }
                guard let result = response.result, !result.isEmpty else { throw NIP46Error.refused("an empty response") }
                return result
            }
            // The stream ended: the deadline passed, or the session is over.
            guard Deadlines.shared.cancel(timer) else { throw NIP46Error.timedOut(method: method, after: client.timeout) }
            throw CancellationError()
        }

        /// The signed, encrypted request event for `request` (to send it some other way, or twice).
        public func event(for request: NIP46.Request) throws -> Event {
            let content: String
            switch client.encryption {
            case .nip44:
                content = try NIP44.encrypt(request.json, conversationKey: ConversationKey(secretKey: client.key, publicKey: client.uri.signer))
            case .nip04:
                content = try NIP04.encrypt(request.json, secretKey: client.key, publicKey: client.uri.signer)
            }
            return EventTemplate(kind: NIP46.kind, content: content, tags: [["p", client.uri.signer.hex]]).sign(with: client.key)
        }

        /// The responses with id `id`, from now until the session ends.
        public func responses(to id: String) -> AsyncStream<NIP46.Response> {
            let (stream, continuation) = AsyncStream<NIP46.Response>.makeStream()
            waiting.withLock { $0[id] = continuation }
            return stream
        }

        private func forget(_ id: String) {
            waiting.withLock { $0.removeValue(forKey: id) }?.finish()
        }

        /// Reads the signer's responses and hands each to whoever waits for its id; the rest is dropped.
        func dispatch(_ events: RelaySubscription) async {
            for await item in events {
                guard case .event(let event, _) = item, event.pubkey == client.uri.signer else { continue }
                let text: String
                do {
                    text = event.content.contains("?iv=")
                        ? try NIP04.decrypt(event.content, secretKey: client.key, publicKey: client.uri.signer)
                        : try NIP44.decrypt(event.content, conversationKey: ConversationKey(secretKey: client.key, publicKey: client.uri.signer))
                } catch {
                    client.logger.debug("a response could not be decrypted", metadata: ["nostr.event.id": "\(event.id.hex)"])
                    continue
                }
                guard let response = try? NIP46.Response(json: text) else { continue }
                _ = waiting.withLock { $0[response.id] }?.yield(response)
            }
            let open = waiting.withLock { state in
                defer { state = [:] }
                return Array(state.values)
            }
            for continuation in open { continuation.finish() }
        }

        // MARK: The methods

        /// `connect` with the URI's secret (and `permissions` asked for; the operator decides what is granted).
        public func connect(permissions: String = "", metadata: String? = nil) async throws {
            var params = [client.uri.signer.hex, client.uri.secret ?? "", permissions]
            if let metadata { params.append(metadata) }
            let result = try await call("connect", params)
            guard result == "ack" || result == client.uri.secret else { throw NIP46Error.refused("connect answered \"\(result)\"") }
        }

        /// The user's public key.
        public func publicKey() async throws -> PublicKey {
            try PublicKey(validatingHex: try await call("get_public_key"))
        }

        /// Signs `template` remotely; the event returned is verified, and its pubkey is `user` when given.
        public func sign(_ template: EventTemplate, as user: PublicKey? = nil) async throws -> Event {
            let event = try Event(json: try await call("sign_event", [template.json]))
            try event.verify()
            guard event.kind == template.kind, event.content == template.content, event.tags == template.tags else {
                throw NIP46Error.refused("the signed event differs from the template")
            }
            if let user, event.pubkey != user { throw NIP46Error.refused("signed by \(event.pubkey.hex), not \(user.hex)") }
            return event
        }

        public func ping() async throws -> String { try await call("ping") }
    }
}

public enum NIP46Error: Error, CustomStringConvertible, Equatable {
    /// The signer answered with an error.
    case refused(String)
    /// No response within the client's timeout.
    case timedOut(method: String, after: Duration)
    /// No relay took the request.
    case unreachable(String)

    public var description: String {
        switch self {
        case .refused(let message): return message
        case .timedOut(let method, let after): return "no response to \(method) within \(after)"
        case .unreachable(let detail): return "no relay accepted the request (\(detail))"
        }
    }
}
