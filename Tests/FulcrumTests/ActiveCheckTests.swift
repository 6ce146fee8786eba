import Foundation
import FulcrumTestSupport
import Glibc
import Testing

/// A real redis-server on a free port, for active checks that speak Redis.
final class RedisServer {
    let port: UInt16
    private let process = Process()

    init() throws {
        let probe = try TestBackend(.echo)   // borrow a free port number, then give it back
        port = probe.port
        probe.stop()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["redis-server", "--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        // Ready once it answers PING (bounded: 10 s).
        let deadline = Date().addingTimeInterval(10)
        while true {
            if let socket = try? TestSocket.connect(port: port, timeout: 1) {
                try socket.send("PING\r\n")
                if (try? socket.receiveLine()) == "+PONG\r" { break }
            }
            guard process.isRunning, Date() < deadline else {
                throw TestSocketError("redis-server on port \(port) did not answer PING", errno: 0)
            }
            usleep(20_000)
        }
    }

    deinit {
        kill(process.processIdentifier, SIGKILL)
        waitBriefly(process)
    }
}

/// Python's http.server serving a directory with a `healthz` file.
final class HTTPServer {
    let port: UInt16
    private let process = Process()
    private let directory: TemporaryDirectory

    init() throws {
        directory = try TemporaryDirectory()
        _ = try directory.write("healthz", "ok\n")
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-u", "-c", """
            import functools, http.server, sys
            handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            print("listening", server.server_address[1], flush=True)
            server.serve_forever()
            """, directory.url.path]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        var line = Data()
        while !line.contains(10) {
            let chunk = pipe.fileHandleForReading.availableData
            if chunk.isEmpty { throw TestSocketError("http.server exited", errno: 0) }
            line.append(chunk)
        }
        port = UInt16(String(decoding: line, as: UTF8.self).split(separator: " ").last!.trimmingCharacters(in: .whitespacesAndNewlines))!
    }

    deinit {
        kill(process.processIdentifier, SIGKILL)
        waitBriefly(process)
    }
}

extension Integration {
    @Suite(.timeLimit(.minutes(1)))
    struct ActiveCheckTests {
        @Test func redisPingPongMarksARealRedisUpAndAWrongReplyDown() throws {
            let redis = try RedisServer()
            let impostor = try BackendProcess("impostor", mode: "wrong")   // port open, wrong answer
            let proxy = try FulcrumProcess(config: """
            workers: 1
            listeners: [{name: redis, listen: 127.0.0.1:0, pool: redis}]
            pools:
              redis:
                backends: [127.0.0.1:\(redis.port), 127.0.0.1:\(impostor.port)]
                health: {check: send_expect, send: "PING\\r\\n", expect: "+PONG", interval: 200ms, rise: 2, fall: 2}
            """)
            let up = try proxy.waitForLog(containing: "backend up")
            #expect(up.contains("127.0.0.1:\(redis.port)") && up.contains("check=send_expect"))
            let down = try proxy.waitForLog(containing: "backend down")
            #expect(down.contains("127.0.0.1:\(impostor.port)"))
            #expect(down.contains("unexpected reply"), "\(down)")
            // Only the real Redis gets clients: every PING through the proxy gets +PONG.
            for _ in 0..<20 {
                let socket = try TestSocket.connect(port: proxy.port("redis"))
                try socket.send("PING\r\n")
                #expect(try socket.receiveLine() == "+PONG\r")
            }
        }

        @Test func expectRegexFailsAWrongReplyAtOnceNotAtTheTimeout() throws {
            // The impostor answers one wrong line and keeps the connection open.
            let impostor = try BackendProcess("impostor", mode: "wrong")
            let started = Date()
            let proxy = try FulcrumProcess(config: """
            workers: 1
            listeners: [{name: front, listen: 127.0.0.1:0, pool: app}]
            pools:
              app:
                backends: [127.0.0.1:\(impostor.port)]
                health: {check: send_expect, send: "PING\\r\\n", expect_regex: "^\\\\+PONG", timeout: 5s, interval: 10s}
            """)
            let down = try proxy.waitForLog(containing: "backend down", timeout: 5)
            let elapsed = Date().timeIntervalSince(started)
            #expect(down.contains("does not match expect_regex") && down.contains("-ERR wrong"), "\(down)")
            print("expect_regex: a wrong reply marked down after \(elapsed) s (timeout 5 s)")
            #expect(elapsed < 2.5, "failed after \(elapsed) s, with a 5 s timeout")
        }

        @Test func httpCheckAcceptsTheRightStatusOnly() throws {
            let web = try HTTPServer()
            let proxy = try FulcrumProcess(config: """
            workers: 1
            listeners:
              - {name: good, listen: 127.0.0.1:0, pool: good}
              - {name: bad, listen: 127.0.0.1:0, pool: bad}
            pools:
              good:
                backends: [127.0.0.1:\(web.port)]
                health: {check: http, path: /healthz, status: 200, interval: 200ms}
              bad:
                backends: [127.0.0.1:\(web.port)]
                health: {check: http, path: /missing, status: 200, interval: 200ms}
            """)
            let up = try proxy.waitForLog(containing: "backend up")
            #expect(up.contains("pool=good") && up.contains("check=http"))
            let down = try proxy.waitForLog(containing: "backend down")
            #expect(down.contains("pool=bad") && down.contains("HTTP status 404"), "\(down)")
            // The pool whose only backend is down refuses clients at once, saying why.
            let socket = try TestSocket.connect(port: proxy.port("bad"))
            #expect(try socket.receiveAll().isEmpty)
            try proxy.waitForLog(containing: "no backend available")
        }

        @Test func onBackendDownCloseEndsEstablishedConnections() throws {
            let backends = try ["a", "b"].map { try BackendProcess($0) }
            let proxy = try startResilient(backends, extra: "    on_backend_down: close")
            // Hold a connection to each backend.
            var held: [String: TestSocket] = [:]
            while held.count < 2 {
                let socket = try TestSocket.connect(port: proxy.port("front"))
                try socket.send("x\n")
                let name = String(try socket.receiveLine().prefix(1))
                if held[name] == nil { held[name] = socket }
            }
            backends[1].signal(SIGSTOP)
            try proxy.waitForLog(containing: "closed connections of a backend marked down")
            #expect(try held["b"]!.receiveAll().isEmpty, "the connection to b was closed")
            try held["a"]!.send("still\n")
            #expect(try held["a"]!.receiveLine() == "a:still")
            backends[1].signal(SIGCONT)
        }

        @Test func panicModeServesFromUnhealthyBackendsRatherThanNothing() throws {
            // Both backends answer clients but fail their checks (wrong path): below the panic threshold
            // Fulcrum balances across them anyway, and says so.
            let web = try HTTPServer()
            let other = try HTTPServer()
            let proxy = try FulcrumProcess(config: """
            workers: 1
            listeners: [{name: web, listen: 127.0.0.1:0, pool: web}]
            pools:
              web:
                backends: [127.0.0.1:\(web.port), 127.0.0.1:\(other.port)]
                health: {check: http, path: /missing, interval: 200ms}
                panic_threshold: 50%
            """)
            try proxy.waitForLog(containing: "backend down", count: 2)
            try proxy.waitForLog(containing: "PANIC")
            let socket = try TestSocket.connect(port: proxy.port("web"))
            try socket.send("GET /healthz HTTP/1.0\r\n\r\n")
            #expect(try socket.receiveLine().hasPrefix("HTTP/1.0 200"))
        }
    }
}
