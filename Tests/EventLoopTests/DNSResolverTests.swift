import EventLoop
import Foundation
import FulcrumTestSupport
import Glibc
import Testing

/// Runs an event base until a condition holds (checked every 5 ms on the loop) or a time limit passes.
final class LoopDriver {
    let base = EventBase()

    /// Whether `condition` held before `timeout` seconds passed.
    @discardableResult
    func run(timeout: Double, until condition: @escaping () -> Bool) -> Bool {
        if condition() { return true }
        let deadline = Date().addingTimeInterval(timeout)
        var held = false
        var check: EventLoop.Timer?
        check = EventLoop.Timer(base: base) { [base] in
            if condition() {
                held = true
                base.exit()
            } else if Date() > deadline {
                base.exit()
            } else {
                check?.schedule(after: 5_000)
            }
        }
        check?.schedule(after: 5_000)
        base.run()
        check?.cancel()
        check = nil
        return held
    }
}

/// A UDP port on 127.0.0.1 where nothing answers: bound by this socket, which never reads, or closed.
final class SilentPort {
    let fd: Int32
    let port: UInt16

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw TestSocketError("bind") }
        port = UInt16(bigEndian: address.sin_port)
    }

    deinit { close(fd) }
}

@Suite(.serialized, .timeLimit(.minutes(1)))
struct DNSResolverTests {
    typealias Outcome = Result<DNSResolver.Answer, DNSResolver.Failure>

    static let hosts: [(address: String, name: String)] = [
        ("127.0.0.11", "web.fulcrum.test"), ("127.0.0.12", "web.fulcrum.test"), ("fd00::11", "web.fulcrum.test"),
        ("127.0.0.13", "v4only.fulcrum.test"),
    ]

    /// Looks `name` up and runs the loop until the answer (at most 5 s).
    static func lookUp(_ resolver: DNSResolver, _ loop: LoopDriver, _ name: String, ipv6: Bool = false) -> Outcome? {
        var outcome: Outcome?
        if ipv6 {
            resolver.resolveIPv6(name) { outcome = $0 }
        } else {
            resolver.resolveIPv4(name) { outcome = $0 }
        }
        loop.run(timeout: 5) { outcome != nil }
        return outcome
    }

    @Test func resolvesAAndAAAARecordsWithTheirTTL() throws {
        let dns = try DNSServerProcess(hosts: Self.hosts, ttl: 7)
        let loop = LoopDriver()
        let resolver = try DNSResolver(base: loop.base, servers: [dns.address], timeout: .milliseconds(500), attempts: 2)
        let v4 = try Self.lookUp(resolver, loop, "web.fulcrum.test")?.get()
        #expect(Set(v4?.addresses ?? []) == [[127, 0, 0, 11], [127, 0, 0, 12]])
        #expect(v4?.ttlSeconds == 7)
        #expect(v4?.endpoints(port: 80).map(\.description).sorted() == ["127.0.0.11:80", "127.0.0.12:80"])
        let v6 = try Self.lookUp(resolver, loop, "web.fulcrum.test", ipv6: true)?.get()
        #expect(v6?.addresses == [[0xFD] + Array(repeating: 0, count: 14) + [0x11]])
        #expect(v6?.ttlSeconds == 7)
        #expect(v6?.endpoints(port: 81).map(\.description) == ["[fd00::11]:81"])
        // A name without records of the family: an answer with none (NODATA), not a failure.
        #expect(try Self.lookUp(resolver, loop, "v4only.fulcrum.test", ipv6: true)?.get().addresses == [])
        // Case and a final dot do not matter.
        #expect(try Self.lookUp(resolver, loop, "V4ONLY.Fulcrum.Test.")?.get().addresses == [[127, 0, 0, 13]])
    }

    @Test func noSuchNameAndADeadServerAreToldApart() throws {
        let dns = try DNSServerProcess(hosts: Self.hosts)
        let loop = LoopDriver()
        let resolver = try DNSResolver(base: loop.base, servers: [dns.address], timeout: .milliseconds(300), attempts: 2)
        #expect(Self.lookUp(resolver, loop, "nope.fulcrum.test") == .failure(.noSuchName))
        // dnsmasq has no upstream server for other domains: it refuses them.
        guard case .failure(.serverFailure(let why)) = Self.lookUp(resolver, loop, "example.org") else {
            Issue.record("a refused query is a server failure")
            return
        }
        #expect(why.contains("refused"))
        let silent = try SilentPort()
        let deaf = try DNSResolver(base: loop.base, servers: ["127.0.0.1:\(silent.port)"], timeout: .milliseconds(200), attempts: 2)
        let started = Date()
        #expect(Self.lookUp(deaf, loop, "web.fulcrum.test") == .failure(.timeout))
        // Two tries of 200 ms.
        #expect(Date().timeIntervalSince(started) >= 0.35)
        dns.stop()
        #expect(Self.lookUp(resolver, loop, "web.fulcrum.test") == .failure(.timeout))
    }

    @Test func anAnswerTooLargeForUDPFailsAsTruncated() throws {
        let many = (1...40).map { (address: "10.0.1.\($0)", name: "many.fulcrum.test") }
        let dns = try DNSServerProcess(hosts: many + [("10.0.2.1", "some.fulcrum.test")] + (1...25).map { ("10.0.3.\($0)", "some.fulcrum.test") })
        let loop = LoopDriver()
        let resolver = try DNSResolver(base: loop.base, servers: [dns.address], timeout: .milliseconds(300), attempts: 2)
        // evdns asks without EDNS(0) and has no TCP: 40 addresses do not fit in 512 bytes.
        guard case .failure(.other(let why)) = Self.lookUp(resolver, loop, "many.fulcrum.test") else {
            Issue.record("40 addresses should not fit")
            return
        }
        #expect(why.contains("truncated"))
        #expect(try Self.lookUp(resolver, loop, "some.fulcrum.test")?.get().addresses.count == 26)
    }

    @Test func localhostAndLiteralsNeedNoQuery() throws {
        let silent = try SilentPort()
        let loop = LoopDriver()
        let resolver = try DNSResolver(base: loop.base, servers: ["127.0.0.1:\(silent.port)"], timeout: .milliseconds(100), attempts: 1)
        let started = Date()
        #expect(try Self.lookUp(resolver, loop, "localhost")?.get().addresses == [[127, 0, 0, 1]])
        #expect(try Self.lookUp(resolver, loop, "LocalHost.", ipv6: true)?.get().addresses == [Array(repeating: 0, count: 15) + [1]])
        #expect(try Self.lookUp(resolver, loop, "10.1.2.3")?.get().addresses == [[10, 1, 2, 3]])
        #expect(try Self.lookUp(resolver, loop, "10.1.2.3", ipv6: true)?.get().addresses == [])
        // Nothing waited for the silent server.
        #expect(Date().timeIntervalSince(started) < 0.1)
    }

    @Test func nameServersFromAResolvConfWithoutItsSearchDomains() throws {
        let dns = try DNSServerProcess(hosts: Self.hosts)
        let directory = try TemporaryDirectory()
        let path = try directory.write("resolv.conf", "search fulcrum.test\noptions ndots:5 timeout:30\nnameserver \(dns.address)\n")
        let loop = LoopDriver()
        let resolver = try DNSResolver(base: loop.base, servers: [], resolvConf: path, timeout: .milliseconds(300), attempts: 2)
        #expect(resolver.nameServerCount == 1)
        #expect(try Self.lookUp(resolver, loop, "v4only.fulcrum.test")?.get().addresses == [[127, 0, 0, 13]])
        // "v4only" is asked as written, not as v4only.fulcrum.test (dnsmasq refuses a bare name).
        let started = Date()
        #expect((try? Self.lookUp(resolver, loop, "v4only")?.get()) == nil)
        // The file's timeout option (30 s) is not taken either.
        #expect(Date().timeIntervalSince(started) < 5)
        // No file: 127.0.0.1 port 53, as the C library does.
        let fallback = try DNSResolver(base: loop.base, servers: [], resolvConf: directory.url.appendingPathComponent("none").path,
                                       timeout: .milliseconds(100), attempts: 1)
        #expect(fallback.nameServerCount == 1)
        #expect(throws: SystemError.self) {
            _ = try DNSResolver(base: loop.base, servers: ["not an address"], timeout: .milliseconds(100), attempts: 1)
        }
    }

    @Test func cancelledAndClosedLookupsNeverCompleteAndAreFreed() throws {
        let silent = try SilentPort()
        let loop = LoopDriver()
        var resolver: DNSResolver? = try DNSResolver(base: loop.base, servers: ["127.0.0.1:\(silent.port)"],
                                                     timeout: .milliseconds(100), attempts: 2)
        var completions = 0
        weak var cancelled: DNSLookup?
        weak var closed: DNSLookup?
        weak var local: DNSLookup?
        do {
            let first = resolver!.resolveIPv4("web.fulcrum.test") { _ in completions += 1 }
            let second = resolver!.resolveIPv6("web.fulcrum.test") { _ in completions += 1 }
            let third = resolver!.resolveIPv4("localhost") { _ in completions += 1 }
            cancelled = first
            closed = second
            local = third
            first.cancel()
            first.cancel()
            #expect(!first.isPending && second.isPending)
        }
        // One turn of the loop: the cancel's callback from evdns comes, and nothing else.
        loop.run(timeout: 0.05) { false }
        #expect(cancelled == nil, "the cancelled lookup is released once evdns has called back")
        #expect(completions == 1, "only localhost answered")
        // Close with a query in flight, then free the resolver: evdns's "shut down" callback comes later.
        let another = resolver!.resolveIPv4("web.fulcrum.test") { _ in completions += 1 }
        resolver!.close()
        resolver = nil
        #expect(!another.isPending)
        another.cancel()
        // Longer than both tries would have taken.
        loop.run(timeout: 0.5) { false }
        #expect(completions == 1)
        #expect(closed == nil && local == nil)
    }

    @Test func aCompletionMayCloseTheResolver() throws {
        let dns = try DNSServerProcess(hosts: Self.hosts)
        let loop = LoopDriver()
        var resolver: DNSResolver? = try DNSResolver(base: loop.base, servers: [dns.address], timeout: .milliseconds(300), attempts: 2)
        var answers = 0
        // Whichever answer comes first closes the resolver: the other never comes.
        let closing: DNSResolver.Completion = { _ in
            answers += 1
            resolver?.close()
            resolver = nil
        }
        resolver!.resolveIPv4("web.fulcrum.test", completion: closing)
        resolver!.resolveIPv4("v4only.fulcrum.test", completion: closing)
        #expect(loop.run(timeout: 5) { answers > 0 })
        loop.run(timeout: 0.3) { false }
        #expect(answers == 1)
        #expect(resolver == nil)
    }
}
