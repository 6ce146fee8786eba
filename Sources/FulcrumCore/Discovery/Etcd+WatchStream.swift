extension Etcd {
    /// Cuts a watch stream, fed in chunks split anywhere, into its JSON messages. The gateway writes one
    /// object per message followed by a newline; the split follows the objects' own braces (outside
    /// strings), so it needs neither the newline nor whole lines per chunk.
    public struct WatchStream: Sendable {
        /// A message longer than this is refused (no watch event comes near it: etcd's own request limit is
        /// 1.5 MiB).
        public static let maxMessage = 16 << 20

        private var buffer: [UInt8] = []
        /// How far `buffer` has been scanned, and the scanner's state there.
        private var scanned = 0
        private var depth = 0
        private var inString = false
        private var escaped = false

        public init() {}

        /// Bytes buffered that do not yet make a whole message.
        public var pending: Int { buffer.count }

        /// Adds `bytes` and returns every message they complete, in order.
        public mutating func feed(_ bytes: [UInt8]) throws(ProtocolError) -> [[UInt8]] {
            buffer += bytes
            var messages: [[UInt8]] = []
            var start = 0
            var index = scanned
            while index < buffer.count {
                let byte = buffer[index]
                if depth == 0 {
                    switch byte {
                    case 0x20, 0x09, 0x0A, 0x0D:
                        start = index + 1
                    case UInt8(ascii: "{"):
                        depth = 1
                    default:
                        throw ProtocolError("the watch stream has \(Etcd.preview(Array(buffer[index...]))) where a JSON object should start")
                    }
                } else if inString {
                    if escaped {
                        escaped = false
                    } else if byte == UInt8(ascii: "\\") {
                        escaped = true
                    } else if byte == UInt8(ascii: "\"") {
                        inString = false
                    }
                } else {
                    switch byte {
                    case UInt8(ascii: "\""): inString = true
                    case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                    case UInt8(ascii: "}"), UInt8(ascii: "]"):
                        depth -= 1
                        if depth == 0 {
                            messages.append(Array(buffer[start...index]))
                            start = index + 1
                        }
                    default: break
                    }
                }
                index += 1
            }
            buffer.removeFirst(start)
            scanned = index - start
            if buffer.count > Self.maxMessage {
                throw ProtocolError("a watch message longer than \(Self.maxMessage) bytes")
            }
            return messages
        }
    }
}
