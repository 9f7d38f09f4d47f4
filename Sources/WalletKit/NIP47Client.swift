import Foundation
public import Logging
public import NostrCore
public import NostrCrypto
public import NostrRelay
import Synchronization

/// A `nostr+walletconnect://` URI: the wallet's key, its relays, and the client's secret.
public struct WalletConnectURI: Sendable, CustomStringConvertible {
    public let wallet: PublicKey
    public let relays: [RelayURL]
    public let secret: SecretKey
    public let lud16: String?

    public init(wallet: PublicKey, relays: [RelayURL], secret: SecretKey, lud16: String? = nil) {
        self.wallet = wallet
        self.relays = relays
        self.secret = secret
        self.lud16 = lud16
    }

    public init(_ text: String) throws {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        let scheme = ["nostr+walletconnect://", "nostrwalletconnect://"].first { trimmed.hasPrefix($0) }
        guard let scheme, let components = URLComponents(string: "nwc://" + trimmed.dropFirst(scheme.count)) else {
            throw NIP47Error(.other, "not a nostr+walletconnect:// URI")
        }
        guard let host = components.host, let wallet = try? PublicKey(hex: host) else {
            throw NIP47Error(.other, "the URI does not name a wallet public key")
        }
        let items = components.queryItems ?? []
        let relays = try items.filter { $0.name == "relay" }.compactMap(\.value).map { try RelayURL($0) }
        guard !relays.isEmpty else { throw NIP47Error(.other, "the URI names no relay") }
        guard let secretText = items.first(where: { $0.name == "secret" })?.value, let secret = try? SecretKey(hex: secretText) else {
            throw NIP47Error(.other, "the URI has no valid secret")
        }
        self.init(wallet: wallet, relays: relays, secret: secret, lud16: items.first { $0.name == "lud16" }?.value)
    }

    /// The URI, relays percent-encoded. It contains the secret: show it once, store it as a credential.
    public var description: String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        var query = relays.map { "relay=" + ($0.string.addingPercentEncoding(withAllowedCharacters: allowed) ?? $0.string) }
        query.append("secret=" + secret.exportHex())
        if let lud16 { query.append("lud16=" + (lud16.addingPercentEncoding(withAllowedCharacters: allowed) ?? lud16)) }
        return "nostr+walletconnect://\(wallet.hex)?" + query.joined(separator: "&")
    }
}

/// A NIP-47 client: sends requests to the wallet a ``WalletConnectURI`` names, over its relays, and reads the
/// responses (matched by the request's id) and the wallet's notifications.
///
/// ```swift
/// let wallet = NIP47Client(uri: try WalletConnectURI(text))
/// let balance = try await wallet.run { try await $0.call("get_balance") }
/// ```
public struct NIP47Client: Sendable {
    public let uri: WalletConnectURI
    /// How long a call waits for its response.
    public var timeout: Duration = .seconds(60)
    /// The scheme requests use (and name in their `encryption` tag).
    public var encryption: Encryption = .nip44
    /// Whether ``run(_:)`` ends on swift-service-lifecycle's graceful shutdown. A service that still needs the
    /// wallet while its requests in flight finish sets it to false and cancels `run` itself when done.
    public var stopsOnGracefulShutdown = true
    let logger: Logger

    public enum Encryption: Sendable { case nip44, nip04 }

    public init(uri: WalletConnectURI, logger: Logger = Logger(label: "nip47") { _ in SwiftLogNoOpLogHandler() }) {
        self.uri = uri
        self.logger = logger
    }

    /// Connects to the relays, listens for responses and notifications, and runs `body` with a session.
    public func run<Result: Sendable>(_ body: (Session) async throws -> Result) async throws -> Result {
        // Relays that show p-tagged events only to their recipient (NIP-42) get AUTH as the connection's key.
        var configuration = RelayPool.Configuration()
        configuration.stopsOnGracefulShutdown = stopsOnGracefulShutdown
        let pool = RelayPool(relays: uri.relays, signer: KeySigner(uri.secret), configuration: configuration, logger: logger)
        return try await pool.withRunning {
            let filter = Filter(
                authors: [uri.wallet], kinds: [NIP47.responseKind, NIP47.notificationKind, NIP47.legacyNotificationKind],
                tags: ["p": [uri.secret.publicKey.hex]], since: Timestamp.now - 10)
            return try await pool.withSubscription([filter]) { events in
                let session = Session(client: self, pool: pool)
                return try await withThrowingTaskGroup(of: Result?.self) { group in
                    group.addTask {
                        await session.dispatch(events)
                        return nil
                    }
                    defer { group.cancelAll() }
                    return try await body(session)
                }
            }
        }
    }

    /// A notification from the wallet.
    public struct Notification: Sendable {
        public let type: String
        public let transaction: [String: JSONValue]
        /// 23197 (NIP-44) or 23196 (NIP-04).
        public let kind: Kind
    }

    public final class Session: Sendable {
        let client: NIP47Client
        let pool: RelayPool
        private let waiting = Mutex<[EventID: AsyncStream<JSONValue>.Continuation]>([:])
        private let notificationStream = AsyncStream<Notification>.makeStream(bufferingPolicy: .bufferingNewest(1_000))

        init(client: NIP47Client, pool: RelayPool) {
            self.client = client
            self.pool = pool
        }

        /// Notifications as they arrive (both kinds; a wallet sends each notification once per kind).
        public var notifications: AsyncStream<Notification> { notificationStream.stream }

        /// Sends `method` with `params` and returns its `result`; an error response throws ``NIP47Error``.
        public func call(_ method: String, _ params: [String: JSONValue] = [:]) async throws -> JSONValue {
            let event = try self.event(for: NIP47.Request(method: method, params: params))
            return try await send(event, method: method)
        }

        /// Sends a prepared request event (to send one request twice, or through other relays) and returns the
        /// result of its response.
        public func send(_ event: Event, method: String) async throws -> JSONValue {
            let responses = self.responses(to: event.id)
            defer { forget(event.id) }
            let results = await pool.publish(event)
            guard results.values.contains(where: \.isAccepted) else {
                throw NIP47Error(.other, "no relay accepted the request (\(results.map { "\($0.key): \($0.value)" }.sorted().joined(separator: "; ")))")
            }
            let timer = Deadlines.shared.schedule(at: .now + client.timeout) { [weak self] in self?.forget(event.id) }
            for await response in responses {
                Deadlines.shared.cancel(timer)
                guard case .object(let object) = response else { throw NIP47Error(.other, "the response is not a JSON object") }
                if case .object(let error)? = object["error"] {
                    let code = error["code"]?.string.flatMap(NIP47.ErrorCode.init(rawValue:)) ?? .other
                    throw NIP47Error(code, error["message"]?.string ?? "")
                }
                guard object["result_type"]?.string == method else {
                    throw NIP47Error(.other, "the response's result_type is \(object["result_type"]?.string ?? "missing"), not \(method)")
                }
                return object["result"] ?? .null
            }
            guard Deadlines.shared.cancel(timer) else { throw NIP47Error(.other, "no response to \(method) within \(client.timeout)") }
            throw CancellationError()
        }

        /// The signed, encrypted request event.
        public func event(for request: NIP47.Request) throws -> Event {
            let key = client.uri.secret
            switch client.encryption {
            case .nip44:
                let content = try NIP44.encrypt(request.json, conversationKey: ConversationKey(secretKey: key, publicKey: client.uri.wallet))
                return EventTemplate(
                    kind: NIP47.requestKind, content: content, tags: [["p", client.uri.wallet.hex], ["encryption", "nip44_v2"]]
                ).sign(with: key)
            case .nip04:
                let content = try NIP04.encrypt(request.json, secretKey: key, publicKey: client.uri.wallet)
                return EventTemplate(kind: NIP47.requestKind, content: content, tags: [["p", client.uri.wallet.hex]]).sign(with: key)
            }
        }

        private func responses(to id: EventID) -> AsyncStream<JSONValue> {
            let (stream, continuation) = AsyncStream<JSONValue>.makeStream()
            waiting.withLock { $0[id] = continuation }
            return stream
        }

        private func forget(_ id: EventID) {
            waiting.withLock { $0.removeValue(forKey: id) }?.finish()
        }

        func dispatch(_ events: RelaySubscription) async {
            let key = client.uri.secret
            for await item in events {
                guard case .event(let event, _) = item, event.pubkey == client.uri.wallet else { continue }
                guard let text = try? (NIP04.isNIP04Payload(event.content)
                    ? NIP04.decrypt(event.content, secretKey: key, publicKey: event.pubkey)
                    : NIP44.decrypt(event.content, conversationKey: ConversationKey(secretKey: key, publicKey: event.pubkey))),
                    let json = try? JSON.parse(text)
                else { continue }
                if event.kind == NIP47.responseKind {
                    guard let id = event.tagValues("e").first.flatMap({ try? EventID(hex: $0) }) else { continue }
                    _ = waiting.withLock { $0[id] }?.yield(json)
                } else if case .object(let object) = json, let type = object["notification_type"]?.string,
                    case .object(let transaction)? = object["notification"]
                {
                    notificationStream.continuation.yield(Notification(type: type, transaction: transaction, kind: event.kind))
                }
            }
            let open = waiting.withLock { state in
                defer { state = [:] }
                return Array(state.values)
            }
            for continuation in open { continuation.finish() }
            notificationStream.continuation.finish()
        }
    }
}
