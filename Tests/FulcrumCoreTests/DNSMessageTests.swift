import Foundation
import FulcrumCore
import Testing

/// The DNS message codec against byte fixtures (answers captured from dnsmasq 2.90, and hand-made hostile
/// messages), and thousands of random and mutated messages that must never crash it.
@Suite struct DNSMessageTests {
    static func bytes(_ hex: String) -> [UInt8] {
        let digits = Array(hex.filter { !$0.isWhitespace })
        return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
    }

    /// dnsmasq's answer to `_redis._tcp.fulcrum.test SRV`: two SRV records (targets written out in full),
    /// and in the additional section t1's A record, whose owner name is a pointer into the second target.
    static let srvAnswer = bytes("""
        a12d 8580 0001 0002 0000 0001
        065f7265646973 045f746370 0766756c6372756d 0474657374 00 0021 0001
        c00c 0021 0001 00000001 0017 0014 0000 18ec 02743207 66756c6372756d0474657374 00
        c00c 0021 0001 00000001 0017 000a 0005 18eb 02743107 66756c6372756d0474657374 00
        c05f 0001 0001 00000001 0004 7f000015
        """)

    /// dnsmasq's answer to `a.fulcrum.test A`: two records whose owner is a pointer to the question.
    static let aAnswer = bytes("""
        3333 8580 0001 0002 0000 0000
        01 61 0766756c6372756d 0474657374 00 0001 0001
        c00c 0001 0001 00000001 0004 7f00000b
        c00c 0001 0001 00000001 0004 7f00000c
        """)

    static let nxdomain = bytes("e598 8183 0001 0000 0000 0000 046e6f7065 0766756c6372756d 0474657374 00 0001 0001")

    @Test func aQueryIsEncodedAsTheRFCSays() throws {
        let query = try DNSMessage.query(id: 0x1234, name: "_redis._tcp.cache.internal.", type: .srv)
        #expect(query == Self.bytes("""
            1234 0100 0001 0000 0000 0001
            065f7265646973 045f746370 056361636865 08696e7465726e616c 00 0021 0001
            00 0029 04d0 0000 0000 0000
            """))
        let plain = try DNSMessage.query(id: 7, name: "a.b", type: .aaaa, recursionDesired: false, udpPayloadSize: nil)
        #expect(plain == Self.bytes("0007 0000 0001 0000 0000 0000 0161 0162 00 001c 0001"))
        // The codec reads back what it wrote.
        let parsed = try DNSMessage(parsing: query)
        #expect(parsed.header.id == 0x1234 && parsed.header.recursionDesired && !parsed.header.isResponse)
        #expect(parsed.questions == [.init(name: "_redis._tcp.cache.internal", type: .srv, recordClass: 1)])
        #expect(parsed.additional.first?.type == .opt)
    }

    @Test func namesThatCannotBeQueriedAreRefused() {
        for bad in ["a..b", ".a", String(repeating: "x", count: 64) + ".test",
                    Array(repeating: String(repeating: "y", count: 60), count: 5).joined(separator: "."), "a\\.b"] {
            #expect(throws: DNSMessageError.invalidName(bad)) { try DNSMessage.query(id: 1, name: bad, type: .a) }
        }
        #expect((try? DNSMessage.query(id: 1, name: String(repeating: "x", count: 63), type: .a)) != nil)
    }

    @Test func anSRVAnswerWithCompressionIsRead() throws {
        let message = try DNSMessage(parsing: Self.srvAnswer)
        #expect(message.header.id == 0xA12D)
        #expect(message.header.isResponse && message.header.isAuthoritative && !message.header.isTruncated)
        #expect(message.header.rcode == .noError)
        #expect(message.questions == [.init(name: "_redis._tcp.fulcrum.test", type: .srv, recordClass: 1)])
        #expect(message.answers.map(\.data) == [
            .srv(.init(priority: 20, weight: 0, port: 6380, target: "t2.fulcrum.test")),
            .srv(.init(priority: 10, weight: 5, port: 6379, target: "t1.fulcrum.test")),
        ])
        #expect(message.answers.allSatisfy { $0.name == "_redis._tcp.fulcrum.test" && $0.ttlSeconds == 1 })
        #expect(message.additional == [.init(name: "t1.fulcrum.test", type: .a, recordClass: 1, ttl: 1, data: .a([127, 0, 0, 21]))])
    }

    @Test func addressAnswersAndErrorsAreRead() throws {
        let a = try DNSMessage(parsing: Self.aAnswer)
        #expect(a.answers.map(\.data) == [.a([127, 0, 0, 11]), .a([127, 0, 0, 12])])
        #expect(a.answers.allSatisfy { $0.name == "a.fulcrum.test" })
        let aaaa = try DNSMessage(parsing: Self.bytes("""
            0001 8180 0001 0001 0000 0000 0161 00 001c 0001
            c00c 001c 0001 80000000 0010 00000000000000000000000000000001
            """))
        #expect(aaaa.answers.first?.data == .aaaa(Array(repeating: 0, count: 15) + [1]))
        // A TTL with the top bit set counts as 0.
        #expect(aaaa.answers.first?.ttlSeconds == 0)
        let nx = try DNSMessage(parsing: Self.nxdomain)
        #expect(nx.header.rcode == .nameError && nx.answers.isEmpty)
        #expect("\(nx.header.rcode)" == "NXDOMAIN")
    }

    @Test func aNegativeAnswersSOAGivesItsMinimum() throws {
        let message = try DNSMessage(parsing: Self.bytes("""
            0002 8183 0001 0000 0001 0000 0161 00 0021 0001
            00 0006 0001 0000012c 0016 00 00 00000001 00000002 00000003 00000004 0000003c
            """))
        #expect(message.authority.first?.data == .soa(minimum: 60))
        #expect(message.authority.first?.ttlSeconds == 300)
    }

    @Test func labelsWithDotsOrBinaryAreEscapedAndNamesCompareWithoutCase() throws {
        let message = try DNSMessage(parsing: Self.bytes("0003 8180 0001 0000 0000 0000 03 612e62 02 00ff 04 54657374 00 0001 0001"))
        #expect(message.questions.first?.name == "a\\046b.\\000\\255.Test")
        #expect(DNSMessage.sameName("T1.Fulcrum.TEST.", "t1.fulcrum.test"))
        #expect(!DNSMessage.sameName("t1.fulcrum.test", "t2.fulcrum.test"))
        #expect(!DNSMessage.sameName("a\\046b", "a.b"))
    }

    @Test func everyPrefixOfAWholeMessageIsRefusedAsTruncated() {
        for fixture in [Self.srvAnswer, Self.aAnswer, Self.nxdomain] {
            for length in 0..<fixture.count {
                do {
                    _ = try DNSMessage(parsing: Array(fixture[0..<length]))
                    Issue.record("a \(length)-byte prefix of a \(fixture.count)-byte message parsed")
                } catch {
                    guard case .truncated = error else { Issue.record("prefix \(length): \(error)"); continue }
                }
            }
        }
    }

    @Test func aTruncatedAnswerKeepsTheRecordsThatArrivedWhole() throws {
        var cut = Self.srvAnswer
        cut[2] |= 0x02 // TC
        cut.removeLast(30) // into the second answer
        let message = try DNSMessage(parsing: cut)
        #expect(message.header.isTruncated)
        #expect(message.answers.count == 1 && message.additional.isEmpty)
    }

    @Test func hostileMessagesAreErrorsNotCrashes() throws {
        let header = "0001 8180 0001 0000 0000 0000"
        let cases: [(String, DNSMessageError)] = [
            // A pointer to itself, and one pointing forward.
            ("\(header) c00c 0001 0001", .badPointer(at: 12)),
            ("\(header) c00e 0001 0001 00", .badPointer(at: 12)),
            // Two pointers that point at each other: the second points backwards, the first then forwards.
            ("\(header) 0161 c010 c00c 0001 0001", .badPointer(at: 14)),
            // Reserved label types 01 and 10.
            ("\(header) 4161 00 0001 0001", .badLabel(at: 12)),
            ("\(header) 8161 00 0001 0001", .badLabel(at: 12)),
            // A label running past the end.
            ("\(header) 3f61 00", .truncated(at: 12)),
            // Counts far beyond the message.
            ("0001 8180 ffff ffff ffff ffff", .truncated(at: 12)),
            // Record data of the wrong size.
            ("0001 8180 0000 0001 0000 0000 00 0001 0001 00000001 0005 7f00000102", .badRecordData(type: 1, at: 23)),
            ("0001 8180 0000 0001 0000 0000 00 001c 0001 00000001 0004 7f000001", .badRecordData(type: 28, at: 23)),
            ("0001 8180 0000 0001 0000 0000 00 0021 0001 00000001 0006 000100010001", .badRecordData(type: 33, at: 23)),
            // An SRV target that runs past its record's data.
            ("0001 8180 0000 0001 0000 0000 00 0021 0001 00000001 0008 000100010001 0161 00", .badRecordData(type: 33, at: 23)),
            // Record data longer than the message.
            ("0001 8180 0000 0001 0000 0000 00 0010 0001 00000001 00ff 00", .truncated(at: 23)),
        ]
        for (hex, expected) in cases {
            #expect(throws: expected, "\(hex)") { try DNSMessage(parsing: Self.bytes(hex)) }
        }
        // Names too long: four 63-byte labels written out, and the same reached through pointers, each
        // record's owner a new label and a pointer to the previous record's owner.
        let plain = Self.bytes("0001 8180 0001 0000 0000 0000") + (0..<4).flatMap { [63] + Array(repeating: 0x61 + UInt8($0), count: 63) } + [0, 0, 1, 0, 1]
        #expect(throws: DNSMessageError.nameTooLong(at: 12 + 3 * 64)) { try DNSMessage(parsing: plain) }
        var chained = Self.bytes("0001 8180 0000 0004 0000 0000")
        var previous = -1
        for index in 0..<4 {
            let here = chained.count
            chained += [63] + Array(repeating: 0x61 + UInt8(index), count: 63)
            chained += previous < 0 ? [0] : [0xC0 | UInt8(previous >> 8), UInt8(previous & 0xFF)]
            chained += [0, 1, 0, 1, 0, 0, 0, 1, 0, 0] // type A, class IN, ttl 1, no data (read as other below)
            chained[chained.count - 9] = 99 // type 99: kept as bytes, so the empty data is valid
            previous = here
        }
        #expect(throws: DNSMessageError.nameTooLong(at: 12)) { try DNSMessage(parsing: chained) }
        // Three of them fit: 3 * 64 + 1 bytes.
        var three = Array(chained[0..<(chained.count - 76)])
        three[7] = 3
        let label = { (c: UInt8) in String(repeating: Character(UnicodeScalar(c)), count: 63) }
        #expect(try DNSMessage(parsing: three).answers.last?.name == [label(0x63), label(0x62), label(0x61)].joined(separator: "."))
    }

    @Test func resolvConfNameServers() {
        let text = """
            # generated
            search corp.example
            nameserver 10.0.0.2
            ; comment
            nameserver\t2001:db8::53   # trailing
            nameserver fe80::1%eth0
            nameserver not-an-address
            options ndots:5
            nameserver 10.0.0.3
            nameserver 127.0.0.1:5353
            nameserver [::1]:5300
            nameserver localhost:53
            nameserver 10.0.0.4:0
            """
        #expect(ResolvConf.nameServers(in: text).map(\.description)
                    == ["10.0.0.2:53", "[2001:db8::53]:53", "10.0.0.3:53", "127.0.0.1:5353", "[::1]:5300"])
        #expect(ResolvConf.nameServers(in: "").isEmpty)
    }

    /// Random bytes, and valid answers mutated (bytes flipped, cut, inserted, counts raised), from a fixed
    /// seed: parsing must end with a message or an error every time. Replay with FULCRUM_FUZZ_SEED=<n>.
    @Test func randomAndMutatedMessagesNeverCrashTheParser() {
        let seed = ProcessInfo.processInfo.environment["FULCRUM_FUZZ_SEED"].flatMap { UInt64($0) } ?? 0xD15C_0DE5
        print("dns message fuzz: seed \(seed) (FULCRUM_FUZZ_SEED=\(seed) replays this run)")
        var random = FastRandom(seed: seed)
        let fixtures = [Self.srvAnswer, Self.aAnswer, Self.nxdomain]
        var parsed = 0, refused = 0
        for index in 0..<20_000 {
            var bytes: [UInt8]
            if index % 4 == 0 {
                bytes = (0..<Int.random(in: 0...300, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            } else {
                bytes = fixtures[index % fixtures.count]
                for _ in 0..<Int.random(in: 1...6, using: &random) {
                    let position = Int.random(in: 0..<bytes.count, using: &random)
                    switch Int.random(in: 0..<5, using: &random) {
                    case 0: bytes[position] = UInt8.random(in: 0...255, using: &random)
                    case 1: bytes[position] ^= 1 << UInt8.random(in: 0...7, using: &random)
                    case 2: bytes.removeLast(Int.random(in: 0...(bytes.count - position - 1), using: &random))
                    case 3: bytes.insert(UInt8.random(in: 0...255, using: &random), at: position)
                    default: if bytes.count > 11 { bytes[5 + 2 * Int.random(in: 0...3, using: &random)] = UInt8.random(in: 0...255, using: &random) }
                    }
                    if bytes.isEmpty { break }
                }
            }
            do {
                let message = try DNSMessage(parsing: bytes)
                // What parses is consistent: every name is at most 255 bytes as labels, escapes included.
                for record in message.answers + message.authority + message.additional {
                    #expect(record.name.utf8.count <= 255 * 4)
                }
                parsed += 1
            } catch {
                refused += 1
            }
        }
        #expect(parsed > 100 && refused > 100, "the mutations should both keep and break messages")
    }
}
