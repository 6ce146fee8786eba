import FulcrumCore
import FulcrumTestSupport
import Testing

/// etcd's gateway messages. The fixtures are answers of a real etcd 3.4.23, copied as it sent them.
@Suite struct EtcdCodecTests {
    static let header = #"{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"3","raft_term":"2"}"#

    // MARK: - Base64 and ranges

    @Test func base64RoundTripsEveryLengthAndMatchesTheStandardAlphabet() {
        #expect(Etcd.base64(Array("/p/a".utf8)) == "L3AvYQ==")
        #expect(Etcd.base64(Array("x".utf8)) == "eA==")
        #expect(Etcd.base64([]) == "")
        #expect(Etcd.base64([0xfb, 0xff, 0xfe]) == "+//+")
        for length in 0..<40 {
            let bytes = randomPayload(count: length, seed: UInt64(length + 1))
            #expect(Etcd.decodeBase64(Etcd.base64(bytes)) == bytes)
        }
        #expect(Etcd.decodeBase64("eA") == Array("x".utf8), "unpadded is accepted")
    }

    @Test(arguments: ["e", "eA=", "e===", "eA==x", "L3Av YQ==", "L3AvYQ=A", "-_8=", "eB==", "ZmC=", "é"])
    func base64RefusesWhatIsNotStandardBase64(_ text: String) {
        #expect(Etcd.decodeBase64(text) == nil)
    }

    @Test func rangeEndIncrementsTheLastByteThatCanBeIncremented() {
        #expect(Etcd.rangeEnd(prefix: Array("/p/".utf8)) == Array("/p0".utf8))
        #expect(Etcd.rangeEnd(prefix: [0x61, 0xff]) == [0x62])
        #expect(Etcd.rangeEnd(prefix: [0x61, 0xfe, 0xff, 0xff]) == [0x61, 0xff])
        #expect(Etcd.rangeEnd(prefix: [0xff, 0xff]) == [0], "no end: every key from the start")
        #expect(Etcd.rangeEnd(prefix: []) == [0])
    }

    // MARK: - Requests

    @Test func requestBodiesUseBase64AndStringInt64s() {
        #expect(Etcd.range(prefix: "/p/") == .init(path: "/v3/kv/range", text: #"{"key":"L3Av","range_end":"L3Aw"}"#))
        #expect(Etcd.watch(prefix: "/p/", startRevision: 42).text
            == #"{"create_request":{"key":"L3Av","range_end":"L3Aw","start_revision":"42","progress_notify":true}}"#)
        #expect(Etcd.watch(prefix: "/p/", startRevision: 42).path == "/v3/watch")
        #expect(Etcd.leaseGrant(ttlSeconds: 3) == .init(path: "/v3/lease/grant", text: #"{"TTL":"3"}"#))
        #expect(Etcd.leaseKeepAlive(id: 4111120152343015946) == .init(path: "/v3/lease/keepalive", text: #"{"ID":"4111120152343015946"}"#))
        #expect(Etcd.leaseRevoke(id: 7) == .init(path: "/v3/lease/revoke", text: #"{"ID":"7"}"#))
        #expect(Etcd.put(key: "/p/a", value: Array("x".utf8), lease: 7)
            == .init(path: "/v3/kv/put", text: #"{"key":"L3AvYQ==","value":"eA==","lease":"7"}"#))
        #expect(Etcd.put(key: "/p/a", value: []).text == #"{"key":"L3AvYQ==","value":""}"#)
        #expect(Etcd.delete(key: "/p/a") == .init(path: "/v3/kv/deleterange", text: #"{"key":"L3AvYQ=="}"#))
        #expect(Etcd.get(key: "/p/a") == .init(path: "/v3/kv/range", text: #"{"key":"L3AvYQ=="}"#))
        #expect(Etcd.get(key: "/p/a", keysOnly: true) == .init(path: "/v3/kv/range", text: #"{"key":"L3AvYQ==","keys_only":true}"#))
    }

    @Test func parsesAKeysOnlyGetWithItsLeaseAndOneForAMissingKey() throws {
        let body = #"{"header":\#(Self.header),"kvs":[{"key":"L3AvYQ==","create_revision":"2","mod_revision":"3","version":"2","lease":"7587883591204929291"}],"count":"1"}"#
        let range = try Etcd.parseRange(Array(body.utf8))
        #expect(range.kvs == [.init(key: Array("/p/a".utf8), value: [], modRevision: 3, lease: 7587883591204929291)])
        let missing = try Etcd.parseRange(Array(#"{"header":\#(Self.header)}"#.utf8))
        #expect(missing.kvs.isEmpty)
    }

    // MARK: - Answers

    @Test func parsesARangeWithKeysAndOneWithout() throws {
        let body = #"{"header":\#(Self.header),"kvs":[{"key":"L3AvYQ==","create_revision":"2","mod_revision":"2","version":"1","value":"eyJhZGRyZXNzIjoiMTI3LjAuMC4xOjEifQ=="},{"key":"L3AvYg==","create_revision":"3","mod_revision":"3","version":"1","value":"eA==","lease":"99"}],"count":"2"}"#
        let range = try Etcd.parseRange(Array(body.utf8))
        #expect(range.revision == 3)
        #expect(range.kvs.map(\.keyText) == ["/p/a", "/p/b"])
        #expect(range.kvs[0].value == Array(#"{"address":"127.0.0.1:1"}"#.utf8))
        #expect(range.kvs[1].modRevision == 3)
        #expect(range.kvs[1].lease == 99)
        let empty = try Etcd.parseRange(Array(#"{"header":\#(Self.header)}"#.utf8))
        #expect(empty == .init(revision: 3, kvs: []))
        // A value set to "" is left out by the gateway.
        let blank = try Etcd.parseRange(Array(#"{"header":\#(Self.header),"kvs":[{"key":"L3AvYQ==","mod_revision":"2"}]}"#.utf8))
        #expect(blank.kvs[0].value == [])
    }

    @Test(arguments: [
        "", "not json", "[]", #"{"kvs":[]}"#, #"{"header":{"revision":"x"}}"#, #"{"header":{"revision":"3"},"kvs":{}}"#,
        #"{"header":{"revision":"3"},"kvs":[{"value":"eA=="}]}"#, #"{"header":{"revision":"3"},"kvs":[{"key":"***"}]}"#,
        #"{"header":{"revision":"3"},"kvs":[{"key":"eA==","value":7}]}"#, #"{"header":{"revision":"3"},"kvs":[1]}"#,
        #"{"error":"etcdserver: mvcc: required revision has been compacted","message":"etcdserver: mvcc: required revision has been compacted","code":11}"#,
        #"{"header":{"revision":"99999999999999999999"}}"#,
    ])
    func refusesMalformedRangeAnswers(_ body: String) {
        #expect(throws: Etcd.ProtocolError.self) { try Etcd.parseRange(Array(body.utf8)) }
    }

    @Test func parsesLeaseGrantsAndKeepalivesIncludingAnExpiredLease() throws {
        let grant = #"{"header":\#(Self.header),"ID":"4111120152343015948","TTL":"3"}"#
        #expect(try Etcd.parseLease(Array(grant.utf8)) == .init(id: 4111120152343015948, ttl: 3))
        #expect(Etcd.Lease(id: 4111120152343015948, ttl: 3).idText == "390da1ff355af20c")
        let alive = #"{"result":{"header":\#(Self.header),"ID":"4111120152343015948","TTL":"3"}}"# + "\n"
        #expect(try Etcd.parseLease(Array(alive.utf8)) == .init(id: 4111120152343015948, ttl: 3))
        // The lease is gone: etcd leaves TTL out (zero).
        let gone = #"{"result":{"header":\#(Self.header),"ID":"123"}}"# + "\n"
        #expect(try Etcd.parseLease(Array(gone.utf8)) == .init(id: 123, ttl: 0))
        let refused = #"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#
        #expect(throws: Etcd.ProtocolError("etcd refused the lease request: etcdserver: requested lease not found")) {
            try Etcd.parseLease(Array(refused.utf8))
        }
        #expect(Etcd.errorMessage(Array(refused.utf8)) == "etcdserver: requested lease not found")
        #expect(Etcd.errorMessage(Array(#"{"error":{"grpc_code":14,"message":"transport is closing"}}"#.utf8)) == "transport is closing")
        #expect(Etcd.errorMessage(Array(grant.utf8)) == nil)
        #expect(try Etcd.parseRevision(Array(#"{"header":\#(Self.header)}"#.utf8)) == 3)
    }

    // MARK: - Watch stream

    static let created = #"{"result":{"header":\#(header),"created":true}}"#
    static let putEvents = #"{"result":{"header":\#(header),"events":[{"kv":{"key":"L3AvYQ==","create_revision":"2","mod_revision":"2","version":"1","value":"eyJhZGRyZXNzIjoiMTI3LjAuMC4xOjEifQ=="}},{"kv":{"key":"L3AvYg==","create_revision":"3","mod_revision":"3","version":"1","value":"eA=="}}]}}"#
    static let deleteEvent = #"{"result":{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"5","raft_term":"2"},"events":[{"type":"DELETE","kv":{"key":"L3AvYw==","mod_revision":"5"}}]}}"#
    static let compacted = #"{"result":{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","raft_term":"2"},"canceled":true,"compact_revision":"5"}}"#
    static let progress = #"{"result":{"header":{"cluster_id":"1","member_id":"2","revision":"17","raft_term":"2"}}}"#

    @Test func parsesEveryKindOfWatchMessage() throws {
        #expect(try Etcd.parseWatchMessage(Array(Self.created.utf8)) == .created(revision: 3))
        guard case .events(let events, let revision) = try Etcd.parseWatchMessage(Array(Self.putEvents.utf8)) else {
            Issue.record("not events")
            return
        }
        #expect(revision == 3)
        #expect(events.count == 2)
        #expect(events[0] == .put(.init(key: Array("/p/a".utf8), value: Array(#"{"address":"127.0.0.1:1"}"#.utf8), modRevision: 2)))
        #expect(try Etcd.parseWatchMessage(Array(Self.deleteEvent.utf8))
            == .events([.delete(.init(key: Array("/p/c".utf8), modRevision: 5))], revision: 5))
        #expect(try Etcd.parseWatchMessage(Array(Self.compacted.utf8)) == .compacted(compactRevision: 5))
        #expect(try Etcd.parseWatchMessage(Array(Self.progress.utf8)) == .progress(revision: 17))
        #expect(try Etcd.parseWatchMessage(Array(#"{"result":{"header":{"revision":"4"},"canceled":true,"cancel_reason":"permission denied"}}"#.utf8))
            == .canceled("etcd canceled the watch: permission denied"))
        #expect(try Etcd.parseWatchMessage(Array(#"{"error":{"grpc_code":14,"http_code":503,"message":"transport is closing","http_status":"Service Unavailable"}}"#.utf8))
            == .error("transport is closing"))
        #expect(try Etcd.parseWatchMessage(Array(#"{"result":{"header":{"revision":"4"},"events":[{"type":"PUT","kv":{"key":"eA=="}}]}}"#.utf8))
            == .events([.put(.init(key: [0x78]))], revision: 4))
    }

    @Test(arguments: [
        "{}", "[]", #"{"result":[]}"#, #"{"result":{"created":"yes"}}"#, #"{"result":{"events":{}}}"#,
        #"{"result":{"events":[{"type":"EXPIRE","kv":{"key":"eA=="}}]}}"#, #"{"result":{"events":[{"kv":{}}]}}"#,
        #"{"result":{"events":[7]}}"#, #"{"result":{"header":{"revision":[1]}}}"#, #"{"result":{"compact_revision":"-"}}"#,
    ])
    func refusesMalformedWatchMessages(_ text: String) {
        #expect(throws: Etcd.ProtocolError.self) { try Etcd.parseWatchMessage(Array(text.utf8)) }
    }

    @Test func splitsAWatchStreamAtAnyChunkBoundary() throws {
        // Braces and an escaped quote inside strings must not end a message.
        let tricky = #"{"result":{"header":{"revision":"9"},"cancel_reason":"a } \" { ] [","canceled":true}}"#
        let messages = [Self.created, Self.putEvents, tricky, Self.deleteEvent, Self.progress]
        let stream = Array((messages.joined(separator: "\n") + "\n").utf8)
        for size in [1, 2, 3, 7, 64, 1000, stream.count] {
            var splitter = Etcd.WatchStream()
            var out: [String] = []
            var offset = 0
            while offset < stream.count {
                let end = min(stream.count, offset + size)
                out += try splitter.feed(Array(stream[offset..<end])).map { String(decoding: $0, as: UTF8.self) }
                offset = end
            }
            #expect(out == messages, "chunks of \(size) bytes")
            #expect(splitter.pending == 0)
        }
        var joined = Etcd.WatchStream()
        #expect(try joined.feed(Array((Self.created + Self.progress + "\r\n " + Self.created).utf8)).count == 3,
                "no newline needed between messages")
    }

    @Test func refusesAStreamThatIsNotJSONObjectsOrNeverEndsAMessage() throws {
        var text = Etcd.WatchStream()
        #expect(throws: Etcd.ProtocolError.self) { try text.feed(Array("HTTP/1.1 200 OK\r\n".utf8)) }
        var list = Etcd.WatchStream()
        #expect(throws: Etcd.ProtocolError.self) { try list.feed(Array(#"[{"result":{}}]"#.utf8)) }
        var endless = Etcd.WatchStream()
        let chunk = Array(#"{"result":{"x":""#.utf8) + [UInt8](repeating: 0x61, count: 1 << 20)
        #expect(throws: Etcd.ProtocolError.self) {
            _ = try endless.feed(chunk)
            for _ in 0..<Etcd.WatchStream.maxMessage >> 20 { _ = try endless.feed([UInt8](repeating: 0x61, count: 1 << 20)) }
        }
    }

    @Test func hostileStreamsGiveErrorsOrMessagesButNeverCrash() {
        var seed: UInt64 = 0x9e37_79b9_7f4a_7c15
        let pieces = [Self.created, Self.putEvents, Self.deleteEvent, Self.compacted, "{", "}", "[", "]", "\"", "\\", "\n",
                      #"{"result":"#, #"{"error":"#, "null", "\u{0}", "é"]
        for _ in 0..<500 {
            var bytes: [UInt8] = []
            for _ in 0..<Int(seed % 12) {
                seed = seed &* 6364136223846793005 &+ 1442695040888963407
                bytes += Array(pieces[Int(seed >> 33) % pieces.count].utf8)
            }
            var splitter = Etcd.WatchStream()
            if let messages = try? splitter.feed(bytes) {
                for message in messages { _ = try? Etcd.parseWatchMessage(message) }
            }
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
        }
    }
}

extension Etcd.Request {
    init(path: String, text: String) { self.init(path: path, body: Array(text.utf8)) }
}
