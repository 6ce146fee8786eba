import EventLoop
import Foundation
@testable import Fulcrum
import FulcrumCore
import FulcrumTestSupport
import Glibc
import Logging
import Testing

/// A UDP DNS server on 127.0.0.1 that answers each query with whatever its script returns (any bytes,
/// any number of datagrams), on the test's event loop: for what a real server rarely does on demand.
final class ScriptedDNSServer {
    private let fd: Int32
    let port: UInt16
    private var watcher: ReadWatcher?
    private(set) var queries: [DNSMessage] = []
    var script: (DNSMessage) -> [[UInt8]]

    init(base: EventBase, script: @escaping (DNSMessage) -> [[UInt8]]) throws {
        self.script = script
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
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
        watcher = ReadWatcher(base: base, fd: fd) { [unowned self] in self.readable() }
    }

    deinit {
        watcher?.cancel()
        close(fd)
    }

    var address: SocketAddress { .ipv4((127, 0, 0, 1), port: port) }

    private func readable() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        var peer = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        while true {
            let n = withUnsafeMutablePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, &buffer, buffer.count, 0, $0, &length) }
            }
            guard n > 0, let query = try? DNSMessage(parsing: Array(buffer[0..<n])) else { return }
            queries.append(query)
            for reply in script(query) {
                _ = withUnsafePointer(to: &peer) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, reply, reply.count, 0, $0, length) }
                }
            }
        }
    }

    // MARK: - Building answers

    static func name(_ text: String) -> [UInt8] {
        text.split(separator: ".").flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) } + [0]
    }

    static func u16(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xFF)] }
    static func u32(_ value: UInt32) -> [UInt8] { u16(UInt16(value >> 16)) + u16(UInt16(value & 0xFFFF)) }

    static func record(_ owner: String, type: UInt16, ttl: UInt32, data: [UInt8]) -> [UInt8] {
        name(owner) + u16(type) + u16(1) + u32(ttl) + u16(UInt16(data.count)) + data
    }

    static func srv(_ owner: String, ttl: UInt32 = 30, priority: UInt16, weight: UInt16, port: UInt16, target: String) -> [UInt8] {
        record(owner, type: 33, ttl: ttl, data: u16(priority) + u16(weight) + u16(port) + name(target))
    }

    static func a(_ owner: String, ttl: UInt32 = 30, _ address: [UInt8]) -> [UInt8] {
        record(owner, type: 1, ttl: ttl, data: address)
    }

    /// A response to `query`: its id and question unless others are given, these flags (QR, RD, RA and
    /// the rcode), these records.
    static func response(to query: DNSMessage, id: UInt16? = nil, flags: UInt16 = 0x8180, question: String? = nil,
                         answers: [[UInt8]] = [], additional: [[UInt8]] = []) -> [UInt8] {
        let q = query.questions[0]
        return u16(id ?? query.header.id) + u16(flags) + u16(1) + u16(UInt16(answers.count)) + u16(0)
            + u16(UInt16(additional.count)) + name(question ?? q.name) + u16(q.type.rawValue) + u16(1)
            + answers.joined() + additional.joined()
    }
}

extension Integration {
    /// The SRV client's side of the wire, against a scripted server: what it takes, ignores and retries.
    @Suite(.timeLimit(.minutes(1))) struct SRVQueryTests {
        static let service = "_redis._tcp.scripted.test"

        static func settings(_ servers: [SocketAddress], timeout: Duration = .milliseconds(400)) -> FulcrumConfig.DNS {
            FulcrumConfig.DNS(servers: servers, family: .ipv4, minTTL: .seconds(1), maxTTL: .seconds(300), timeout: timeout)
        }

        static func source(_ h: DiscoveryHarness, _ settings: FulcrumConfig.DNS) -> (DNSService, SRVSource) {
            let service = DNSService(base: h.base, settings: settings, logger: h.logger)
            return (service, SRVSource(service: service, name: Self.service, settings: settings, logger: h.logger, report: h.sink))
        }

        @Test func answersWithAnotherIdOrQuestionAreIgnoredAndTargetsWithoutAddressesAskEvdns() throws {
            let h = DiscoveryHarness()
            let server = try ScriptedDNSServer(base: h.base) { query in
                let q = query.questions[0]
                if q.type == .a {
                    // evdns asking for the target the SRV answer gave no address for.
                    return [ScriptedDNSServer.response(to: query, answers: [ScriptedDNSServer.a(q.name, ttl: 20, [10, 0, 0, 2])])]
                }
                return [
                    ScriptedDNSServer.response(to: query, id: query.header.id &+ 1,
                                               answers: [ScriptedDNSServer.srv(q.name, priority: 0, weight: 1, port: 1, target: "decoy.test")]),
                    ScriptedDNSServer.response(to: query, question: "_other._tcp.scripted.test",
                                               answers: [ScriptedDNSServer.srv(q.name, priority: 0, weight: 1, port: 2, target: "decoy.test")]),
                    ScriptedDNSServer.response(to: query, answers: [
                        ScriptedDNSServer.srv(q.name, ttl: 40, priority: 5, weight: 7, port: 6379, target: "one.scripted.test"),
                        ScriptedDNSServer.srv(q.name, ttl: 30, priority: 9, weight: 0, port: 6380, target: "two.scripted.test"),
                    ], additional: [ScriptedDNSServer.a("one.scripted.test", ttl: 50, [10, 0, 0, 1])]),
                ]
            }
            let (service, source) = Self.source(h, Self.settings([server.address]))
            source.start()
            let answer = h.next()
            #expect(answer == .snapshot([
                DiscoveredBackend(.init(address: .ipv4((10, 0, 0, 1), port: 6379), weight: 7, priority: 0)),
                DiscoveredBackend(.init(address: .ipv4((10, 0, 0, 2), port: 6380), weight: 1, priority: 1)),
            ], detail: "2 SRV records, ttl 20s"))
            // The SRV query (with EDNS(0)), then evdns's A query for the second target only.
            #expect(server.queries.map { $0.questions[0].type } == [.srv, .a])
            #expect(server.queries.first?.additional.first?.type == .opt)
            #expect(server.queries.last?.questions.first?.name.lowercased() == "two.scripted.test")
            source.stop()
            service.close()
        }

        @Test func aServerFailureOrAMalformedAnswerMovesToTheNextServer() throws {
            let h = DiscoveryHarness()
            let failing = try ScriptedDNSServer(base: h.base) { [ScriptedDNSServer.response(to: $0, flags: 0x8182)] }
            let garbled = try ScriptedDNSServer(base: h.base) { query in
                [ScriptedDNSServer.u16(query.header.id) + [0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 0x3F]]
            }
            let good = try ScriptedDNSServer(base: h.base) { query in
                [ScriptedDNSServer.response(to: query, answers: [ScriptedDNSServer.srv(Self.service, priority: 0, weight: 1, port: 1,
                                                                                        target: "one.scripted.test")],
                                            additional: [ScriptedDNSServer.a("one.scripted.test", [10, 0, 0, 9])])]
            }
            let (service, source) = Self.source(h, Self.settings([failing.address, garbled.address, good.address]))
            source.start()
            #expect(DiscoveryHarness.keys(h.next()) == ["10.0.0.9:1"])
            #expect([failing.queries.count, garbled.queries.count, good.queries.count] == [Int](repeating: 1, count: 3))
            source.stop()
            service.close()

            // Without the good one: both problems are told.
            let (service2, source2) = Self.source(h, Self.settings([failing.address, garbled.address]))
            source2.start()
            guard case .failed(let message, _) = h.next() else { Issue.record("\(h.reports)"); return }
            #expect(message.contains("\(failing.address) answered SERVFAIL"))
            #expect(message.contains("\(garbled.address): malformed answer"))
            source2.stop()
            service2.close()
        }

        @Test func aTruncatedAnswerIsUsedAsFarAsItArrived() throws {
            let h = DiscoveryHarness()
            var records = 1
            let server = try ScriptedDNSServer(base: h.base) { query in
                if query.questions[0].type == .a {
                    return [ScriptedDNSServer.response(to: query, answers: [ScriptedDNSServer.a("one.scripted.test", [10, 0, 0, 5])])]
                }
                let srv = ScriptedDNSServer.srv(Self.service, priority: 0, weight: 1, port: 1, target: "one.scripted.test")
                let a = ScriptedDNSServer.a("one.scripted.test", [10, 0, 0, 5])
                // TC set; the second answer record cut in the middle.
                var bytes = ScriptedDNSServer.response(to: query, flags: 0x8380, answers: Array(repeating: srv, count: records + 1),
                                                       additional: [a])
                bytes.removeLast(a.count + srv.count / 2)
                if records == 0 { bytes = ScriptedDNSServer.response(to: query, flags: 0x8380) }
                return [bytes]
            }
            let (service, source) = Self.source(h, Self.settings([server.address]))
            source.start()
            let answer = h.next()
            // The record that arrived whole counts; its target's address was cut off, so evdns is asked.
            guard case .snapshot(let backends, let detail) = answer else { Issue.record("\(String(describing: answer))"); return }
            #expect(backends.map(\.key) == ["10.0.0.5:1"])
            #expect(server.queries.map { $0.questions[0].type } == [.srv, .a])
            #expect(detail.hasSuffix("truncated answer"))
            source.stop()

            records = 0
            let again = SRVSource(service: service, name: Self.service, settings: Self.settings([server.address]), logger: h.logger,
                                  report: h.sink)
            again.start()
            #expect(h.next() == .failed("\(Self.service): the answer was truncated (TC) and TCP fallback is not supported",
                                        retryIn: .seconds(1)))
            again.stop()
            service.close()
        }

        @Test func aSilentServerTimesOutAfterTheTimeout() throws {
            let h = DiscoveryHarness()
            let silent = try ScriptedDNSServer(base: h.base) { _ in [] }
            let (service, source) = Self.source(h, Self.settings([silent.address], timeout: .milliseconds(300)))
            let started = Date()
            source.start()
            #expect(h.next() == .failed("\(Self.service): no answer within 300ms", retryIn: .seconds(1)))
            let waited = Date().timeIntervalSince(started)
            #expect(waited >= 0.28 && waited < 2, "two tries of 150 ms: \(waited)")
            #expect(silent.queries.count == 2)
            // The retry comes after the backoff, and fails again with a longer one.
            #expect(h.next() == .failed("\(Self.service): no answer within 300ms", retryIn: .seconds(2)))
            source.stop()
            service.close()
        }
    }
}
