/// etcd's v3 API as its HTTP/JSON gateway speaks it (etcd 3.4 and later): the request bodies Fulcrum sends
/// and the answers it reads. No I/O here.
///
/// The gateway's JSON is protobuf's: keys and values are base64, 64-bit integers are strings
/// (`"revision": "41"`), and fields with their zero value are left out (a missing `TTL` is 0, a watch
/// event without `type` is a PUT). Unary answers are the message itself; streamed ones (a watch, a lease
/// keepalive) wrap each message as `{"result": {...}}`, or `{"error": {...}}` when the stream fails.
public enum Etcd {
    /// A request for one gateway endpoint: `POST path` with this JSON body.
    public struct Request: Equatable, Sendable {
        public let path: String
        public let body: [UInt8]

        public init(path: String, body: [UInt8]) {
            self.path = path
            self.body = body
        }

        init(_ path: String, _ body: JSON) {
            self.init(path: path, body: Array(body.text.utf8))
        }

        /// The body as text, for tests and logs.
        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// An answer that is not what the gateway sends.
    public struct ProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
        public let message: String

        public init(_ message: String) { self.message = message }

        public var description: String { message }
    }

    /// One key and its value, as a range or a watch event lists it.
    public struct KeyValue: Equatable, Sendable {
        public var key: [UInt8]
        public var value: [UInt8]
        public var modRevision: Int64
        /// The lease the key is attached to; 0 for none.
        public var lease: Int64

        public init(key: [UInt8], value: [UInt8] = [], modRevision: Int64 = 0, lease: Int64 = 0) {
            self.key = key
            self.value = value
            self.modRevision = modRevision
            self.lease = lease
        }

        /// The key as text: etcd keys are bytes, Fulcrum's are UTF-8 (anything else is shown with
        /// replacement characters).
        public var keyText: String { String(decoding: key, as: UTF8.self) }
    }

    /// The answer to a range request: the keys, and the store's revision they were read at.
    public struct RangeResult: Equatable, Sendable {
        public var revision: Int64
        public var kvs: [KeyValue]

        public init(revision: Int64, kvs: [KeyValue]) {
            self.revision = revision
            self.kvs = kvs
        }
    }

    public enum WatchEvent: Equatable, Sendable {
        case put(KeyValue)
        case delete(KeyValue)

        public var keyValue: KeyValue {
            switch self {
            case .put(let kv), .delete(let kv): return kv
            }
        }
    }

    /// One message of a watch stream.
    public enum WatchMessage: Equatable, Sendable {
        /// The watch exists; `revision` is the store's at that moment (events before it may still follow
        /// when the watch started in the past).
        case created(revision: Int64)
        /// Changes, in revision order.
        case events([WatchEvent], revision: Int64)
        /// Nothing changed under the watched range up to `revision` (asked for with `progress_notify`).
        case progress(revision: Int64)
        /// The start revision was compacted away: read the keys again and watch from there.
        case compacted(compactRevision: Int64)
        /// etcd ended the watch (its reason, if it gave one).
        case canceled(String)
        /// The gateway reported an error instead of a message.
        case error(String)
    }

    /// A lease as grant and keepalive answers give it; `ttl` 0 means it no longer exists.
    public struct Lease: Equatable, Sendable {
        public var id: Int64
        public var ttl: Int64

        public init(id: Int64, ttl: Int64) {
            self.id = id
            self.ttl = ttl
        }

        /// How etcdctl shows a lease ID: hexadecimal.
        public var idText: String { String(UInt64(bitPattern: id), radix: 16) }
    }
}

// MARK: - Requests

extension Etcd {
    /// Every key under `prefix` (`range_end` is the prefix with its last byte plus one).
    public static func range(prefix: String) -> Request {
        let key = Array(prefix.utf8)
        return Request("/v3/kv/range", .object(["key": .string(base64(key)), "range_end": .string(base64(rangeEnd(prefix: key)))]))
    }

    /// One key: cheap, and its answer carries the store's revision (a liveness check). With `keysOnly`
    /// the answer leaves the value out: the key, its revisions and its lease only.
    public static func get(key: String, keysOnly: Bool = false) -> Request {
        var members: [JSON.Member] = [.init("key", .string(base64(Array(key.utf8))))]
        if keysOnly { members.append(.init("keys_only", .bool(true))) }
        return Request("/v3/kv/range", .object(members))
    }

    /// Watches every key under `prefix` from `startRevision` on, with progress notifications when asked.
    public static func watch(prefix: String, startRevision: Int64, progressNotify: Bool = true) -> Request {
        let key = Array(prefix.utf8)
        var create: [JSON.Member] = [
            .init("key", .string(base64(key))),
            .init("range_end", .string(base64(rangeEnd(prefix: key)))),
            .init("start_revision", .string(String(startRevision))),
        ]
        if progressNotify { create.append(.init("progress_notify", .bool(true))) }
        return Request("/v3/watch", .object([.init("create_request", .object(create))]))
    }

    public static func leaseGrant(ttlSeconds: Int64) -> Request {
        Request("/v3/lease/grant", .object(["TTL": .string(String(ttlSeconds))]))
    }

    public static func leaseKeepAlive(id: Int64) -> Request {
        Request("/v3/lease/keepalive", .object(["ID": .string(String(id))]))
    }

    public static func leaseRevoke(id: Int64) -> Request {
        Request("/v3/lease/revoke", .object(["ID": .string(String(id))]))
    }

    /// Sets `key` to `value`, attached to `lease` when there is one (the key then goes with the lease).
    public static func put(key: String, value: [UInt8], lease: Int64? = nil) -> Request {
        var members: [JSON.Member] = [.init("key", .string(base64(Array(key.utf8)))), .init("value", .string(base64(value)))]
        if let lease { members.append(.init("lease", .string(String(lease)))) }
        return Request("/v3/kv/put", .object(members))
    }

    /// Deletes one key.
    public static func delete(key: String) -> Request {
        Request("/v3/kv/deleterange", .object(["key": .string(base64(Array(key.utf8)))]))
    }

    /// The end of the range of every key that starts with `prefix`: the prefix with its last byte that is
    /// not 0xff increased by one, and the bytes after it dropped. An empty prefix, or one of 0xff bytes
    /// only, has no such end: `[0]` then means every key from the start on.
    public static func rangeEnd(prefix: [UInt8]) -> [UInt8] {
        var end = prefix
        while let last = end.last {
            if last < 0xff {
                end[end.count - 1] = last + 1
                return end
            }
            end.removeLast()
        }
        return [0]
    }
}

// MARK: - Answers

extension Etcd {
    /// A range answer: its revision (`header.revision`) and keys.
    public static func parseRange(_ body: [UInt8]) throws(ProtocolError) -> RangeResult {
        let message = try object(body, "range answer")
        if let error = errorText(message) { throw ProtocolError("etcd refused the range request: \(error)") }
        let revision = try int64(message["header"]?["revision"], "header.revision")
        guard revision > 0 else { throw ProtocolError("the range answer has no revision") }
        var kvs: [KeyValue] = []
        if let list = message["kvs"] {
            guard case .array(let items) = list else { throw ProtocolError("'kvs' in the range answer is not a list") }
            for item in items { kvs.append(try keyValue(item)) }
        }
        return RangeResult(revision: revision, kvs: kvs)
    }

    /// The store's revision in any unary answer (put, delete, revoke, a liveness get).
    public static func parseRevision(_ body: [UInt8]) throws(ProtocolError) -> Int64 {
        let message = try object(body, "answer")
        if let error = errorText(message) { throw ProtocolError("etcd refused the request: \(error)") }
        return try int64(message["header"]?["revision"], "header.revision")
    }

    /// A lease grant or keepalive answer (the keepalive's is wrapped in `result`). A missing `TTL` is 0:
    /// the lease has expired or never existed.
    public static func parseLease(_ body: [UInt8]) throws(ProtocolError) -> Lease {
        // A keepalive streams one message per line; the first is the answer.
        let first = body.split(separator: 10, omittingEmptySubsequences: true).first.map(Array.init) ?? body
        var message = try object(first, "lease answer")
        if let error = errorText(message) { throw ProtocolError("etcd refused the lease request: \(error)") }
        if let result = message["result"] { message = result }
        if let error = errorText(message) { throw ProtocolError("etcd refused the lease request: \(error)") }
        let id = try int64(message["ID"], "ID")
        let ttl = try int64(message["TTL"], "TTL")
        return Lease(id: id, ttl: max(0, ttl))
    }

    /// The error an answer reports (`{"error": "...", "message": "...", "code": 5}`, or the streaming form
    /// `{"error": {"message": ...}}`), if any.
    public static func errorMessage(_ body: [UInt8]) -> String? {
        guard let message = try? JSON.parse(body) else { return nil }
        return errorText(message)
    }

    /// One message of a watch stream (as `WatchStream` splits them).
    public static func parseWatchMessage(_ bytes: [UInt8]) throws(ProtocolError) -> WatchMessage {
        let wrapper = try object(bytes, "watch message")
        if let error = errorText(wrapper) { return .error(error) }
        guard let message = wrapper["result"] else { throw ProtocolError("a watch message without 'result'") }
        guard case .object = message else { throw ProtocolError("'result' of a watch message is not an object") }
        let revision = try int64(message["header"]?["revision"], "header.revision")
        let compactRevision = try int64(message["compact_revision"], "compact_revision")
        let canceled = try bool(message["canceled"], "canceled")
        let created = try bool(message["created"], "created")
        if compactRevision > 0 { return .compacted(compactRevision: compactRevision) }
        if canceled {
            var reason = "etcd canceled the watch"
            if case .string(let text)? = message["cancel_reason"], !text.isEmpty { reason += ": \(text)" }
            return .canceled(reason)
        }
        if created { return .created(revision: revision) }
        var events: [WatchEvent] = []
        if let list = message["events"] {
            guard case .array(let items) = list else { throw ProtocolError("'events' of a watch message is not a list") }
            for item in items {
                guard case .object = item else { throw ProtocolError("a watch event is not an object") }
                let kv = try keyValue(item["kv"] ?? .null)
                switch item["type"] {
                case nil, .string("PUT")?: events.append(.put(kv))
                case .string("DELETE")?: events.append(.delete(kv))
                case let other?: throw ProtocolError("a watch event of unknown type \(other.text)")
                }
            }
        }
        return events.isEmpty ? .progress(revision: revision) : .events(events, revision: revision)
    }

    // MARK: Fields

    private static func object(_ bytes: [UInt8], _ what: String) throws(ProtocolError) -> JSON {
        let value: JSON
        do {
            value = try JSON.parse(bytes)
        } catch {
            throw ProtocolError("the \(what) is not JSON (\(error)): \(preview(bytes))")
        }
        guard case .object = value else { throw ProtocolError("the \(what) is not a JSON object: \(preview(bytes))") }
        return value
    }

    private static func errorText(_ message: JSON) -> String? {
        switch message["error"] {
        case .string(let text)?:
            return text
        case .object?:
            if case .string(let text)? = message["error"]?["message"] { return text }
            return message["error"]?.text
        default:
            return nil
        }
    }

    private static func keyValue(_ value: JSON) throws(ProtocolError) -> KeyValue {
        guard case .object = value else { throw ProtocolError("a key-value is not an object") }
        guard case .string(let keyText)? = value["key"], let key = decodeBase64(keyText), !key.isEmpty else {
            throw ProtocolError("a key-value without a base64 'key'")
        }
        var bytes: [UInt8] = []
        switch value["value"] {
        case nil: break
        case .string(let text)?:
            guard let decoded = decodeBase64(text) else { throw ProtocolError("the value of \(String(decoding: key, as: UTF8.self)) is not base64") }
            bytes = decoded
        default:
            throw ProtocolError("the value of \(String(decoding: key, as: UTF8.self)) is not a string")
        }
        return KeyValue(key: key, value: bytes, modRevision: try int64(value["mod_revision"], "mod_revision"),
                        lease: try int64(value["lease"], "lease"))
    }

    /// A protobuf int64 in JSON: a string of digits (or a plain number); missing is 0.
    static func int64(_ value: JSON?, _ name: String) throws(ProtocolError) -> Int64 {
        switch value {
        case nil, .null?: return 0
        case .string(let text)?:
            guard let number = Int64(text) else { throw ProtocolError("'\(name)' is not an integer: \(preview(Array(text.utf8)))") }
            return number
        case .int(let number)?: return Int64(number)
        default: throw ProtocolError("'\(name)' is not an integer")
        }
    }

    private static func bool(_ value: JSON?, _ name: String) throws(ProtocolError) -> Bool {
        switch value {
        case nil, .null?: return false
        case .bool(let flag)?: return flag
        default: throw ProtocolError("'\(name)' is not true or false")
        }
    }

    /// Up to 120 bytes of an answer, for messages.
    static func preview(_ bytes: [UInt8]) -> String {
        let text = String(decoding: bytes.prefix(120), as: UTF8.self)
        return bytes.count > 120 ? text + "..." : text
    }
}
