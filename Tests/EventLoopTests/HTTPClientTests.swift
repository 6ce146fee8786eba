import EventLoop
import Foundation
import Glibc
import Testing

/// A loopback HTTP server whose every answer is scripted by the test: one thread, connections one at a time.
final class ScriptedHTTPServer: @unchecked Sendable {
    /// One accepted connection, with blocking reads and writes.
    final class Connection {
        let fd: Int32
        private var pending: [UInt8] = []

        init(fd: Int32) { self.fd = fd }

        /// The next request's head and body (by Content-Length); nil once the client closed.
        func readRequest() -> (head: String, body: [UInt8])? {
            while true {
                if let end = find([13, 10, 13, 10]) {
                    let head = String(decoding: pending[..<end], as: UTF8.self)
                    pending.removeFirst(end + 4)
                    var length = 0
                    for line in head.split(separator: "\r\n") where line.lowercased().hasPrefix("content-length:") {
                        length = Int(line.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) ?? 0
                    }
                    while pending.count < length { guard fill() else { return nil } }
                    let body = Array(pending.prefix(length))
                    pending.removeFirst(length)
                    return (head, body)
                }
                guard fill() else { return nil }
            }
        }

        func write(_ text: String) { write(Array(text.utf8)) }

        func write(_ bytes: [UInt8]) {
            var offset = 0
            while offset < bytes.count {
                let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
                guard n > 0 else { return }
                offset += n
            }
        }

        /// One chunk of a chunked body.
        func chunk(_ text: String) { write(String(text.utf8.count, radix: 16) + "\r\n" + text + "\r\n") }

        /// Waits until the client closes (or 10 s pass).
        func waitForClose() {
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            while fill() {}
        }

        private func fill() -> Bool {
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { return false }
            pending += buffer[..<n]
            return true
        }

        private func find(_ needle: [UInt8]) -> Int? {
            guard pending.count >= needle.count else { return nil }
            for i in 0...(pending.count - needle.count) where Array(pending[i..<(i + needle.count)]) == needle { return i }
            return nil
        }
    }

    let port: UInt16
    private let listenFD: Int32
    private let lock = NSLock()
    private var _accepted = 0
    private var _requests: [(head: String, body: [UInt8])] = []
    let done = DispatchSemaphore(value: 0)

    /// `handler` serves one connection; the server stops after `connections` of them.
    init(connections: Int = 1, handler: @escaping @Sendable (Connection, ScriptedHTTPServer) -> Void) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        listen(fd, 16)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        port = UInt16(bigEndian: address.sin_port)
        listenFD = fd
        Thread.detachNewThread { [self] in
            for _ in 0..<connections {
                let client = accept(fd, nil, nil)
                guard client >= 0 else { break }
                lock.withLock { _accepted += 1 }
                handler(Connection(fd: client), self)
                close(client)
            }
            done.signal()
        }
    }

    deinit {
        shutdown(listenFD, Int32(SHUT_RDWR))
        close(listenFD)
    }

    var accepted: Int { lock.withLock { _accepted } }
    var requests: [(head: String, body: [UInt8])] { lock.withLock { _requests } }

    func record(_ request: (head: String, body: [UInt8])) { lock.withLock { _requests.append(request) } }
}

/// Runs the loop until `base.exit()`, at most `seconds`.
func runLoop(_ base: EventBase, seconds: Double = 10) {
    let guardTimer = EventLoop.Timer(base: base) { base.exit() }
    guardTimer.schedule(after: Int64(seconds * 1_000_000))
    base.run()
}

@Suite(.timeLimit(.minutes(1)))
struct HTTPClientTests {
    @Test func sendsJSONWithAHostHeaderAndReusesTheConnection() throws {
        let server = try ScriptedHTTPServer { connection, server in
            while let request = connection.readRequest() {
                server.record(request)
                connection.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}")
            }
        }
        let base = EventBase()
        let client = HTTPClient(base: base, host: "127.0.0.1", port: server.port)
        var answers: [Result<HTTPClientResponse, HTTPClientError>] = []
        client.request(method: .post, path: "/v3/kv/range", body: Array(#"{"key":"eA=="}"#.utf8), timeout: .seconds(5)) { first in
            answers.append(first)
            // A second request from inside the first one's completion, on the same connection.
            client.request(method: .post, path: "/two", body: [], timeout: .seconds(5)) { second in
                answers.append(second)
                base.exit()
            }
        }
        runLoop(base)
        #expect(answers.count == 2)
        #expect(try answers.first?.get() == HTTPClientResponse(status: 200, body: Array(#"{"ok":true}"#.utf8)))
        let requests = server.requests
        #expect(requests.count == 2)
        #expect(requests.first?.head.hasPrefix("POST /v3/kv/range HTTP/1.1\r\n") == true)
        #expect(requests.first?.head.contains("Host: 127.0.0.1:\(server.port)") == true)
        #expect(requests.first?.head.contains("Content-Type: application/json") == true)
        #expect(requests.first?.body == Array(#"{"key":"eA=="}"#.utf8))
        #expect(server.accepted == 1, "one keep-alive connection")
    }

    @Test func streamsChunksAsTheyArriveThenEnds() throws {
        let server = try ScriptedHTTPServer { connection, server in
            guard connection.readRequest() != nil else { return }
            connection.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in ["{\"a\":", "1}\n", "{\"b\":2}\n"] {
                connection.chunk(piece)
                usleep(20_000)
            }
            connection.write("0\r\n\r\n")
        }
        let base = EventBase()
        let client = HTTPClient(base: base, host: "127.0.0.1", port: server.port)
        var received: [UInt8] = []
        var chunks = 0
        var ended: Result<Int, HTTPClientError>?
        client.stream(method: .post, path: "/v3/watch", body: [], timeout: .seconds(5), onChunk: { bytes in
            received += bytes
            chunks += 1
        }, completion: { result in
            ended = result
            base.exit()
        })
        runLoop(base)
        #expect(String(decoding: received, as: UTF8.self) == "{\"a\":1}\n{\"b\":2}\n")
        #expect(chunks >= 2, "delivered as they came, not at the end")
        #expect(try ended?.get() == 200)
    }

    @Test func aStreamCancelledOrClosedInsideItsOwnCallbackDeliversNothingMore() throws {
        for closeClient in [false, true] {
            let server = try ScriptedHTTPServer { connection, _ in
                guard connection.readRequest() != nil else { return }
                connection.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for i in 0..<200 {
                    connection.chunk("{\"n\":\(i)}\n")
                    usleep(1_000)
                }
                connection.waitForClose()
            }
            let base = EventBase()
            var client: HTTPClient? = HTTPClient(base: base, host: "127.0.0.1", port: server.port)
            var chunks = 0
            var completions = 0
            var call: HTTPCall?
            call = client?.stream(method: .post, path: "/watch", body: [], timeout: .seconds(5), onChunk: { _ in
                chunks += 1
                if closeClient {
                    // Closed and released while libevent is inside the request's callback.
                    client = nil
                } else {
                    call?.cancel()
                }
            }, completion: { _ in completions += 1 })
            let later = EventLoop.Timer(base: base) { base.exit() }
            later.schedule(after: 300_000)
            runLoop(base)
            #expect(chunks == 1, "close \(closeClient)")
            #expect(completions == 0)
            #expect(call?.isActive == false)
            client = nil
            // The connection is really closed: the server sees the end.
            #expect(server.done.wait(timeout: .now() + 10) == .success)
        }
    }

    /// A TCP socket bound to a free loopback port without listening: connects to it are refused.
    static func boundNotListening() throws -> (Int32, UInt16) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard fd >= 0, bound else { throw POSIXError(.EADDRNOTAVAIL) }
        return (fd, UInt16(bigEndian: address.sin_port))
    }

    @Test func refusedTimedOutAndDroppedConnectionsFailWithTheirReason() throws {
        let base = EventBase()
        // Refused: a port bound by a socket that does not listen, held for the whole test so that no
        // server of this test (or another) can be given it.
        let (refusedFD, refusedPort) = try Self.boundNotListening()
        defer { Glibc.close(refusedFD) }
        var refused: HTTPClientError?

        // Silent: accepts, never answers.
        let silent = try ScriptedHTTPServer { connection, _ in
            _ = connection.readRequest()
            connection.waitForClose()
        }
        var timedOut: HTTPClientError?
        var took: Double = 0
        let start = Date()
        let silentClient = HTTPClient(base: base, host: "127.0.0.1", port: silent.port)
        silentClient.request(method: .get, path: "/", body: [], timeout: .milliseconds(300)) { result in
                if case .failure(let error) = result { timedOut = error }
                took = Date().timeIntervalSince(start)
            }
        // Dropped mid-stream.
        let dropping = try ScriptedHTTPServer { connection, _ in
            guard connection.readRequest() != nil else { return }
            connection.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            connection.chunk("{}\n")
        }
        var dropped: HTTPClientError?
        let droppingClient = HTTPClient(base: base, host: "127.0.0.1", port: dropping.port)
        droppingClient.stream(method: .post, path: "/", body: [], timeout: .seconds(5), onChunk: { _ in }) { result in
            if case .failure(let error) = result { dropped = error }
        }
        // Hangs up without a word.
        let hangup = try ScriptedHTTPServer { connection, _ in _ = connection.readRequest() }
        var hungUp: HTTPClientError?
        let hangupClient = HTTPClient(base: base, host: "127.0.0.1", port: hangup.port)
        hangupClient.request(method: .get, path: "/", body: [], timeout: .seconds(5)) { result in
            if case .failure(let error) = result { hungUp = error }
        }
        // Silent after its headers: the idle timeout ends it.
        let idle = try ScriptedHTTPServer { connection, _ in
            guard connection.readRequest() != nil else { return }
            connection.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            connection.chunk("{}\n")
            connection.waitForClose()
        }
        var idled: HTTPClientError?
        let idleClient = HTTPClient(base: base, host: "127.0.0.1", port: idle.port)
        idleClient.stream(method: .post, path: "/", body: [], timeout: .seconds(5), idleTimeout: .milliseconds(200),
                          onChunk: { _ in }) { result in
            if case .failure(let error) = result { idled = error }
        }
        // An error status on a stream.
        let failing = try ScriptedHTTPServer { connection, _ in
            guard connection.readRequest() != nil else { return }
            connection.write("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 11\r\n\r\n{\"error\":1}")
            connection.waitForClose()
        }
        var status: HTTPClientError?
        let failingClient = HTTPClient(base: base, host: "127.0.0.1", port: failing.port)
        failingClient.stream(method: .post, path: "/", body: [], timeout: .seconds(5), onChunk: { _ in
            Issue.record("a chunk of an error answer")
        }) { result in
            if case .failure(let error) = result { status = error }
        }
        // Too large.
        let large = try ScriptedHTTPServer { connection, _ in
            guard connection.readRequest() != nil else { return }
            connection.write("HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + String(repeating: "x", count: 5000))
            connection.waitForClose()
        }
        var tooLarge: HTTPClientError?
        let largeClient = HTTPClient(base: base, host: "127.0.0.1", port: large.port, maxBodySize: 1000)
        largeClient.request(method: .get, path: "/", body: [], timeout: .seconds(5)) { result in
            if case .failure(let error) = result { tooLarge = error }
        }
        let refusedClient = HTTPClient(base: base, host: "127.0.0.1", port: refusedPort)
        refusedClient.request(method: .get, path: "/", body: [], timeout: .seconds(5)) { result in
            if case .failure(let error) = result { refused = error }
        }
        let repeatTimer = RepeatingCheck(base: base) {
            refused != nil && timedOut != nil && dropped != nil && idled != nil && status != nil && tooLarge != nil && hungUp != nil
        }
        runLoop(base)
        withExtendedLifetime((repeatTimer, silentClient, droppingClient, idleClient, failingClient, largeClient, refusedClient, hangupClient)) {}
        #expect(hungUp == .connection("connection to 127.0.0.1:\(hangup.port) closed before an answer"))
        #expect(refused?.description.hasPrefix("cannot connect to 127.0.0.1:\(refusedPort)") == true, "\(String(describing: refused))")
        #expect(timedOut == .timedOut("no answer from 127.0.0.1:\(silent.port) within 300ms"))
        #expect(took > 0.25 && took < 3)
        #expect(dropped == .connection("connection to 127.0.0.1:\(dropping.port) closed before the answer ended"))
        #expect(idled == .timedOut("127.0.0.1:\(idle.port) sent nothing for 200ms"))
        #expect(status == .status(500, body: Array(#"{"error":1}"#.utf8)))
        #expect(tooLarge == .invalidResponse("the answer from 127.0.0.1:\(large.port) is larger than 1000 bytes"))
    }
}

/// Checks a condition every 20 ms and ends the loop once it holds.
final class RepeatingCheck {
    private var timer: EventLoop.Timer?

    init(base: EventBase, condition: @escaping () -> Bool) {
        timer = EventLoop.Timer(base: base) { [unowned self] in
            if condition() { base.exit() } else { self.timer?.schedule(after: 20_000) }
        }
        timer?.schedule(after: 20_000)
    }
}
