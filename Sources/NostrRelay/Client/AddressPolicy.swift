import Foundation
import NIOPosix

/// Which addresses a requester may make us connect to: the relays and URLs a request names (a DVM job's
/// inputs and `relays` tag, a requester's inbox relays) must not lead the service into its own host or network.
package enum AddressPolicy {
    /// Why a host was not connected to.
    package struct Refusal: Error, CustomStringConvertible {
        package let description: String
    }

    /// The threads lookups block on (the system's resolver has no asynchronous interface): a pool of their own, so
    /// that names whose servers do not answer hold up other lookups only, not NIO's file I/O.
    private static let lookups: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 4)
        pool.start()
        return pool
    }()

    /// Looks `host` up (off the calling thread, for at most `timeout`) and returns its addresses; throws
    /// ``Refusal`` if it does not resolve in time or any address it resolves to is private (``isPrivate(_:)``).
    /// `host` may be a literal address, an IPv6 one in brackets or not.
    package static func checked(
        _ host: String, timeout: Duration = .seconds(5), lookup: @escaping @Sendable (String) -> [[UInt8]] = resolve
    ) async throws -> [[UInt8]] {
        let addresses = try await addresses(of: host, timeout: timeout, lookup: lookup)
        if addresses.contains(where: isPrivate) {
            throw Refusal(description: "the host is a private address (loopback, private, link-local or reserved)")
        }
        return addresses
    }

    /// Looks `host` up (on `pool`, the policy's own threads by default, for at most `timeout`) and returns its
    /// addresses, in the resolver's order; throws ``Refusal`` if it does not resolve in time or at all. `host`
    /// may be a literal address, an IPv6 one in brackets or not.
    package static func addresses(
        of host: String, timeout: Duration = .seconds(5), on pool: NIOThreadPool? = nil,
        lookup: @escaping @Sendable (String) -> [[UInt8]] = resolve
    ) async throws -> [[UInt8]] {
        let trimmed = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        // A lookup that hangs keeps its thread until the resolver gives up; the caller does not wait for it.
        let answer = OneShot<[[UInt8]]>()
        let timer = Deadlines.shared.schedule(at: .now + timeout) { answer.expire() }
        defer { Deadlines.shared.cancel(timer) }
        // A lookup still queued when its caller gave up is skipped: a backlog behind names that hang drains
        // without asking the resolver again.
        (pool ?? lookups).submit { state in answer.fulfil(state == .active && !answer.isExpired ? lookup(trimmed) : []) }
        guard let addresses = await answer.wait() else { throw Refusal(description: "the host did not resolve within \(timeout)") }
        guard !addresses.isEmpty else { throw Refusal(description: "the host does not resolve") }
        return addresses
    }

    /// The addresses `host` resolves to (a literal address resolves to itself).
    package static func resolve(_ host: String) -> [[UInt8]] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &list) == 0, let first = list else { return [] }
        defer { freeaddrinfo(first) }
        var addresses: [[UInt8]] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let entry = cursor {
            if let address = entry.pointee.ai_addr {
                switch Int32(address.pointee.sa_family) {
                case AF_INET:
                    address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { v4 in
                        addresses.append(withUnsafeBytes(of: v4.pointee.sin_addr) { Array($0) })
                    }
                case AF_INET6:
                    address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { v6 in
                        addresses.append(withUnsafeBytes(of: v6.pointee.sin6_addr) { Array($0) })
                    }
                default:
                    break
                }
            }
            cursor = entry.pointee.ai_next
        }
        return addresses
    }

    /// `address` (4 or 16 bytes) as text, as a URL host or a socket address takes it (IPv6 without brackets).
    package static func text(_ address: [UInt8]) -> String? {
        let family: Int32
        switch address.count {
        case 4: family = AF_INET
        case 16: family = AF_INET6
        default: return nil
        }
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let written = address.withUnsafeBytes { bytes in inet_ntop(family, bytes.baseAddress, &buffer, socklen_t(buffer.count)) }
        guard written != nil else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Loopback, private, shared, link-local, multicast, unspecified, benchmarking, documentation and reserved
    /// ranges (IPv4 and IPv6), and IPv6 addresses that carry an IPv4 one (IPv4-mapped and -compatible, NAT64,
    /// 6to4) by the IPv4 address they carry; Teredo counts as private (its IPv4 address is obscured).
    package static func isPrivate(_ address: [UInt8]) -> Bool {
        if address.count == 4 {
            let (a, b, c) = (address[0], address[1], address[2])
            return a == 0 || a == 10 || a == 127 || a >= 224
                || (a == 100 && (64...127).contains(b)) || (a == 169 && b == 254)
                || (a == 172 && (16...31).contains(b)) || (a == 192 && b == 168)
                || (a == 192 && b == 0 && (c == 0 || c == 2)) || (a == 198 && (b == 18 || b == 19))
                || (a == 198 && b == 51 && c == 100) || (a == 203 && b == 0 && c == 113)
        }
        guard address.count == 16 else { return true }
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, and :: and ::1 with it).
        if address[0..<10].allSatisfy({ $0 == 0 }) && (address[10..<12].allSatisfy { $0 == 0xff } || address[10..<12].allSatisfy { $0 == 0 }) {
            return address[10] == 0 ? true : isPrivate(Array(address[12..<16]))
        }
        // 64:ff9b::/96 and 64:ff9b:1::/48 (NAT64) translate to the IPv4 address in the last four bytes.
        if address[0] == 0x00 && address[1] == 0x64 && address[2] == 0xff && address[3] == 0x9b {
            return isPrivate(Array(address[12..<16]))
        }
        // 2002::/16 (6to4) carries its IPv4 address in bytes 2–5; 2001::/32 is Teredo; 2001:db8::/32 documentation.
        if address[0] == 0x20 && address[1] == 0x02 { return isPrivate(Array(address[2..<6])) }
        if address[0] == 0x20 && address[1] == 0x01 && ((address[2] == 0 && address[3] == 0) || (address[2] == 0x0d && address[3] == 0xb8)) {
            return true
        }
        return address[0] & 0xfe == 0xfc || (address[0] == 0xfe && address[1] & 0xc0 == 0x80) || address[0] == 0xff
    }
}
