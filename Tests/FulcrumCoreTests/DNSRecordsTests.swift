import FulcrumCore
import Testing

@Suite struct DNSRecordsTests {
    static func v4(_ last: UInt8) -> SocketAddress { .ipv4((10, 0, 0, last), port: 0) }

    @Test func addressesAreDeduplicatedInAStableOrder() {
        let v6: SocketAddress = .ipv6(Array(repeating: 0, count: 15) + [1], port: 0)
        let rotated = [Self.v4(3), v6, Self.v4(1), Self.v4(3), Self.v4(2)]
        #expect(DNSRecords.ordered(rotated) == [Self.v4(1), Self.v4(2), Self.v4(3), v6])
        #expect(DNSRecords.ordered(rotated.reversed()) == DNSRecords.ordered(rotated))
        #expect(DNSRecords.address([1, 2, 3, 4], port: 9) == .ipv4((1, 2, 3, 4), port: 9))
        #expect(DNSRecords.address([1, 2, 3], port: 9) == nil)
    }

    @Test func priorityBecomesATierAndWeightIsKeptInRange() {
        let backends = DNSRecords.backends([
            .init(priority: 20, weight: 0, port: 6380, target: "b", addresses: [Self.v4(2)]),
            .init(priority: 10, weight: 5, port: 6379, target: "a", addresses: [Self.v4(1), Self.v4(4)]),
            .init(priority: 50, weight: 65_535, port: 6381, target: "c", addresses: [Self.v4(3)]),
            .init(priority: 20, weight: 7, port: 6379, target: "d", addresses: []),
        ])
        #expect(backends.map(\.key) == ["10.0.0.1:6379", "10.0.0.4:6379", "10.0.0.2:6380", "10.0.0.3:6381"])
        #expect(backends.map(\.backend.priority) == [0, 0, 1, 2])
        #expect(backends.map(\.backend.weight) == [5, 5, 1, 1000])
        #expect(backends.allSatisfy { $0.key == $0.backend.address.description && $0.backend.state == .enabled })
    }

    @Test func tiersStopAtTheHighestPriorityAPoolTakes() {
        let targets = (0..<120).map { DNSRecords.SRVTarget(priority: UInt16($0), weight: 1, port: 1, target: "t\($0)",
                                                             addresses: [.ipv4((10, 0, UInt8($0 / 256), UInt8($0 % 256)), port: 0)]) }
        let tiers = DNSRecords.backends(targets).map(\.backend.priority)
        #expect(tiers.first == 0 && tiers.max() == 100 && tiers.filter { $0 == 100 }.count == 20)
    }

    @Test func anAddressListedTwiceKeepsItsMostPreferredRecord() {
        let backends = DNSRecords.backends([
            .init(priority: 5, weight: 9, port: 80, target: "backup", addresses: [Self.v4(1)]),
            .init(priority: 1, weight: 3, port: 80, target: "primary", addresses: [Self.v4(1)]),
            .init(priority: 1, weight: 4, port: 80, target: "again", addresses: [Self.v4(1)]),
            .init(priority: 5, weight: 2, port: 81, target: "other port", addresses: [Self.v4(1)]),
        ])
        #expect(backends.map(\.key) == ["10.0.0.1:80", "10.0.0.1:81"])
        #expect(backends.map(\.backend.weight) == [3, 2])
        #expect(backends.map(\.backend.priority) == [0, 1])
    }

    @Test func backoffDoublesUpToItsCaps() {
        var backoff = DNSRetryBackoff()
        let waits = (0..<8).map { _ in backoff.next(cap: .seconds(300)) }
        #expect(waits == [1, 2, 4, 8, 16, 30, 30, 30].map { .seconds($0) })
        #expect(backoff.next(cap: .seconds(5)) == .seconds(5))
        backoff.reset()
        #expect(backoff.next(cap: .seconds(300)) == .seconds(1))
        for _ in 0..<100 { _ = backoff.next(cap: .seconds(300)) }
        #expect(backoff.next(cap: .seconds(300)) == .seconds(30))
    }
}
