@testable import EventLoop
import CLibevent
import FulcrumTestSupport
import Dispatch
import Glibc
import Synchronization
import Testing

/// The relay on its own, between real loopback TCP sockets: each test owns the far ends and drives them
/// from plain threads with blocking calls (every one bounded by a socket timeout), while the test thread
/// runs the loop until the relay closes.
@Suite(.timeLimit(.minutes(1)))
struct RelayTests {
    final class Recorder: RelayDelegate {
        let base: EventBase
        var closed: RelayCloseReason?
        init(base: EventBase) { self.base = base }
        func relayClosed(_ relay: Relay, reason: RelayCloseReason) {
            closed = reason
            base.exit()
        }
        func relayMeasured(_ relay: Relay, latency microseconds: Int64) {}
        func relayFirstByte(_ relay: Relay) {}
        func relayUpstreamFailed(_ relay: Relay, _ failure: UpstreamFailure) -> UpstreamFailureResponse { .proceed }
        func relayDetached(_ relay: Relay) {}
    }

    final class AttachOnConnect: ConnectorDelegate {
        let relay: Relay
        var error: ConnectError?
        init(relay: Relay) { self.relay = relay }
        func connectorFinished(_ connector: Connector, error: ConnectError?) {
            if let error {
                self.error = error
                relay.close(.noUpstream)
            } else {
                relay.attach(connector)
            }
        }
        func connectorSlow(_ connector: Connector) {}
    }

    /// What the far ends' threads received, for the test thread to check.
    final class Received: Sendable {
        let bytes = Mutex<[String: [UInt8]]>([:])
        func set(_ key: String, _ value: [UInt8]) { bytes.withLock { $0[key] = value } }
        subscript(_ key: String) -> [UInt8] { bytes.withLock { $0[key] ?? [] } }
    }

    /// A connected loopback TCP pair: the near end non-blocking (the relay's), the far end blocking.
    private func tcpPair() throws -> (near: Int32, far: TestSocket) {
        let listening = try Socket.listen(Endpoint(ipv4: (127, 0, 0, 1), port: 0), reusePort: false, backlog: 4)
        defer { Socket.close(listening) }
        let far = try TestSocket.connect(port: try Socket.localEndpoint(listening).port)
        let near = try accepted(from: listening)
        return (near, far)
    }

    /// The next connection of a non-blocking listening socket (waiting up to 5 s), made non-blocking.
    private func accepted(from listening: Int32) throws -> Int32 {
        var ready = pollfd(fd: listening, events: Int16(POLLIN), revents: 0)
        guard poll(&ready, 1, 5000) == 1 else { throw TestSocketError("nothing to accept", errno: 0) }
        let fd = accept(listening, nil, nil)
        guard fd >= 0 else { throw TestSocketError("accept") }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }

    private func setBuffer(_ fd: Int32, _ option: Int32, _ bytes: Int32) {
        var value = bytes
        setsockopt(fd, SOL_SOCKET, option, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    private func pattern(_ count: Int, seed: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 7 &+ seed) % 251) }
    }

    /// Looks on the loop every millisecond whether the relay has stopped reading from its upstream, and
    /// runs `then` once it has.
    final class PauseWatch {
        var timer: Timer?
        init(base: EventBase, relay: Relay, then: @escaping () -> Void) {
            timer = Timer(base: base) { [unowned self] in
                if relay.sides[Relay.upstream].paused { then() } else { self.timer?.schedule(after: 1_000) }
            }
            timer?.schedule(after: 1_000)
        }
    }

    /// Closes the relay if the test has not ended after `seconds`, so a stall fails instead of hanging.
    private func watchdog(_ base: EventBase, _ relay: Relay, seconds: Int64 = 20,
                          also: @escaping () -> Void = {}) -> Timer {
        let timer = Timer(base: base) {
            relay.close(.shutdown)
            also()
        }
        timer.schedule(after: seconds * 1_000_000)
        return timer
    }

    /// Copied, and spliced through a pipe (each direction moves to splicing after its first full read).
    @Test(arguments: [false, true])
    func bulkBothWaysWithAPausedReaderArrivesWholeAndInOrder(splice: Bool) throws {
        let base = EventBase()
        let (clientNear, clientFar) = try tcpPair()
        let (upstreamNear, upstreamFar) = try tcpPair()
        // Fixed socket buffers towards the client (loopback's automatic ones grow past the whole transfer),
        // so that the relay's own queue towards it fills.
        setBuffer(clientNear, SO_SNDBUF, 64 << 10)
        setBuffer(clientFar.fd, SO_RCVBUF, 64 << 10)
        let recorder = Recorder(base: base)
        let group = RelayGroup() // the relay keeps an unowned reference: the group outlives it
        let relay = Relay(base: base, clientFD: clientNear,
                          options: RelayOptions(highWatermark: 16 << 10, idleTimeoutMicroseconds: 0, splice: splice),
                          delegate: recorder, group: group)
        relay.attach(upstream: upstreamNear)
        let size = 3 << 20
        let up = pattern(size, seed: 1), down = pattern(size, seed: 2)
        let received = Received()
        // The client reads nothing until the relay has stopped reading from the upstream (its queue towards
        // the client is full); the loop says when, through a pipe the reader waits on.
        var go: [Int32] = [-1, -1]
        #expect(pipe(&go) == 0)
        let (goRead, goWrite) = (go[0], go[1])
        let threads = [
            LoopThread.spawn(name: "client-writer") {
                try? clientFar.send(up)
                clientFar.shutdownWrite()
            },
            LoopThread.spawn(name: "upstream-reader") {
                received.set("up", (try? upstreamFar.receiveAll()) ?? [])
            },
            LoopThread.spawn(name: "upstream-writer") {
                try? upstreamFar.send(down)
                upstreamFar.shutdownWrite()
            },
            LoopThread.spawn(name: "client-reader") {
                var byte: UInt8 = 0
                _ = read(goRead, &byte, 1)
                received.set("down", (try? clientFar.receiveAll()) ?? [])
            },
        ]
        var paused = false
        let watch = PauseWatch(base: base, relay: relay) {
            paused = true
            var byte: UInt8 = 1
            _ = write(goWrite, &byte, 1)
        }
        let timer = watchdog(base, relay) {
            var byte: UInt8 = 0
            _ = write(goWrite, &byte, 1)
        }
        base.run()
        withExtendedLifetime(watch) {}
        threads.forEach { $0.join() }
        timer.cancel()
        Glibc.close(goRead)
        Glibc.close(goWrite)
        #expect(paused)
        #expect(recorder.closed == .completed)
        #expect(received["up"].count == size)
        #expect(received["up"] == up)
        #expect(received["down"].count == size)
        #expect(received["down"] == down)
        #expect(relay.bytesFromClient == size)
        #expect(relay.bytesToClient == size)
        // Spliced bytes went through the loop's pipes; copied ones never made one.
        #expect((base.pipes.created > 0) == splice)
        withExtendedLifetime(group) {}
    }

    /// A spliced direction towards a client that starts reading slowly: the pipe is only partly flushed at
    /// each writable edge, and the upstream then finishes (end-of-file), or goes quiet until the client has
    /// everything sent so far. No byte may stay behind in the pipe either way.
    @Test(arguments: [false, true])
    func aSplicedDirectionToASlowReaderLosesNothingWhenItsSenderEndsOrPauses(pauseMidway: Bool) throws {
        let base = EventBase()
        let (clientNear, clientFar) = try tcpPair()
        let (upstreamNear, upstreamFar) = try tcpPair()
        // Room for a whole 128 KiB read at first (so splicing starts), little enough that the slow reader
        // below keeps the pipe from emptying at once.
        setBuffer(clientNear, SO_SNDBUF, 128 << 10)
        setBuffer(clientFar.fd, SO_RCVBUF, 64 << 10)
        let recorder = Recorder(base: base)
        let group = RelayGroup() // the relay keeps an unowned reference: the group outlives it
        let relay = Relay(base: base, clientFD: clientNear,
                          options: RelayOptions(highWatermark: 256 << 10, idleTimeoutMicroseconds: 0, splice: true),
                          delegate: recorder, group: group)
        relay.attach(upstream: upstreamNear)
        let half = 1 << 20
        let down = pattern(2 * half, seed: 3)
        let received = Received()
        let firstHalfRead = DispatchSemaphore(value: 0)
        clientFar.shutdownWrite()
        // The first 512 KiB wait in the upstream's sockets (what its receive buffer does not hold waits in
        // the far end's send buffer) before the loop runs, so the first read fills the whole scratch buffer
        // and the direction moves to splicing.
        setBuffer(upstreamNear, SO_RCVBUF, 1 << 20)
        try upstreamFar.send(Array(down[..<(512 << 10)]))
        let threads = [
            LoopThread.spawn(name: "upstream-writer") {
                try? upstreamFar.send(Array(down[(512 << 10)..<half]))
                // Quiet until the client has the first half: the relay sees EAGAIN on a spliced direction.
                if pauseMidway { _ = firstHalfRead.wait(timeout: .now() + 5) }
                try? upstreamFar.send(Array(down[half...]))
                upstreamFar.shutdownWrite()
                _ = try? upstreamFar.receiveAll()
            },
            LoopThread.spawn(name: "client-reader") {
                var got: [UInt8] = []
                var chunk = [UInt8](repeating: 0, count: 4096)
                clientFar.setTimeout(10)
                while true {
                    let n = read(clientFar.fd, &chunk, chunk.count)
                    if n <= 0 { break }
                    let before = got.count
                    got += chunk[..<n]
                    if before < half && got.count >= half { firstHalfRead.signal() }
                    // Fast for the first 256 KiB, then slow: the pipe towards it fills.
                    if got.count > 256 << 10 { usleep(500) }
                }
                received.set("down", got)
            },
        ]
        // What the test is about: reading from the upstream paused with bytes left in the client's pipe.
        var pausedWithBytesPiped = false
        var look: Timer?
        look = Timer(base: base) {
            if relay.sides[Relay.upstream].paused && relay.sides[Relay.client].piped > 0 { pausedWithBytesPiped = true }
            if !pausedWithBytesPiped { look?.schedule(after: 500) }
        }
        look?.schedule(after: 500)
        let timer = watchdog(base, relay)
        base.run()
        threads.forEach { $0.join() }
        timer.cancel()
        look?.cancel()
        #expect(recorder.closed == .completed)
        #expect(received["down"].count == down.count)
        #expect(received["down"] == down)
        #expect(base.pipes.created > 0, "the direction was spliced")
        #expect(pausedWithBytesPiped, "reading paused while bytes waited in the pipe")
        withExtendedLifetime(group) {}
    }

    /// What a relay whose stream never runs dry does (its event made active again after each wakeup's reads)
    /// must not keep the loop from its timers (and from polling its sockets): a due timer fires while the
    /// event keeps coming back.
    @Test func anEventThatKeepsComingBackLeavesRoomForTimers() {
        final class Spinner {
            var event: OpaquePointer?
            var runs = 0
            var stopped = false
            // Bounded: without room for timers, the spinner ends the test itself after this many runs.
            let limit = 2_000_000
        }
        let base = EventBase()
        let spinner = Spinner()
        let limit = spinner.limit
        spinner.event = event_new(base.base, -1, 0, { _, _, context in
            let spinner = Unmanaged<Spinner>.fromOpaque(context!).takeUnretainedValue()
            spinner.runs += 1
            if !spinner.stopped && spinner.runs < spinner.limit { event_active(spinner.event, EV_READ, 0) }
        }, Unmanaged.passUnretained(spinner).toOpaque())
        event_active(spinner.event, EV_READ, 0)
        var runsWhenTheTimerFired = -1
        let timer = Timer(base: base) {
            runsWhenTheTimerFired = spinner.runs
            spinner.stopped = true
        }
        timer.schedule(after: 5_000)
        base.run()
        event_free(spinner.event)
        #expect(runsWhenTheTimerFired > 0 && runsWhenTheTimerFired < limit,
                "the timer fired after \(runsWhenTheTimerFired) runs of the event (\(limit): only once it stopped)")
    }

    /// Replays once, on the upstream it is given, attached on the loop's next pass.
    final class ReplayOnto: RelayDelegate {
        let base: EventBase
        let next: Int32
        var closed: RelayCloseReason?
        var failures: [UpstreamFailure] = []
        var attach: Timer?
        init(base: EventBase, next: Int32) {
            self.base = base
            self.next = next
        }
        func relayClosed(_ relay: Relay, reason: RelayCloseReason) {
            closed = reason
            base.exit()
        }
        func relayMeasured(_ relay: Relay, latency microseconds: Int64) {}
        func relayFirstByte(_ relay: Relay) {}
        func relayUpstreamFailed(_ relay: Relay, _ failure: UpstreamFailure) -> UpstreamFailureResponse {
            failures.append(failure)
            return failures.count == 1 ? .replay : .proceed
        }
        func relayDetached(_ relay: Relay) {
            attach = Timer(base: base) { [next] in relay.attach(upstream: next) }
            attach?.schedule(after: 0)
        }
    }

    /// The client's bytes and end-of-file are all in its socket when the first send to a backend fails (the
    /// backend reset it): the relay replays to another backend, and what it had not read yet (more bytes,
    /// the end-of-file) still reaches that backend, though no new readiness report will come for them.
    @Test func aReplayAfterAFailedSendReadsWhatTheClientLeftInItsSocket() throws {
        let base = EventBase()
        let (clientNear, clientFar) = try tcpPair()
        let (failingNear, failingFar) = try tcpPair()
        let (goodNear, goodFar) = try tcpPair()
        // The whole request and its end-of-file wait in the client's socket before the loop runs; one read
        // (128 KiB) takes only part of them.
        setBuffer(clientNear, SO_RCVBUF, 2 << 20)
        let request = pattern(200 << 10, seed: 4)
        try clientFar.send(request)
        clientFar.shutdownWrite()
        failingFar.reset()
        let delegate = ReplayOnto(base: base, next: goodNear)
        let group = RelayGroup() // the relay keeps an unowned reference: the group outlives it
        let relay = Relay(base: base, clientFD: clientNear,
                          options: RelayOptions(highWatermark: 256 << 10, idleTimeoutMicroseconds: 0, replayLimit: 1 << 20),
                          delegate: delegate, group: group)
        // Attached once the loop has seen the client's report, so the client is read right after the attach.
        let attach = Timer(base: base) { relay.attach(upstream: failingNear) }
        attach.schedule(after: 0)
        let received = Received()
        let backend = LoopThread.spawn(name: "good-backend") {
            received.set("request", (try? goodFar.receiveAll()) ?? [])
            try? goodFar.send("ok")
            goodFar.shutdownWrite()
        }
        let timer = watchdog(base, relay, seconds: 10) { goodFar.shutdownWrite() }
        base.run()
        backend.join()
        timer.cancel()
        #expect(delegate.failures.count == 1)
        #expect(received["request"].count == request.count)
        #expect(received["request"] == request)
        #expect(delegate.closed == .completed)
        #expect(String(decoding: try clientFar.receiveAll(), as: UTF8.self) == "ok")
        withExtendedLifetime(group) {}
    }

    @Test func bytesAndEndOfFileWaitingOnBothSocketsBeforeRelayingStartsAreForwarded() throws {
        let base = EventBase()
        let (clientNear, clientFar) = try tcpPair()
        let (upstreamNear, upstreamFar) = try tcpPair()
        // Both far ends speak and finish before the relay reads anything: the client while the relay has no
        // upstream yet (its one readiness report arrives then), the upstream before it is attached.
        try clientFar.send("request")
        clientFar.shutdownWrite()
        try upstreamFar.send("banner")
        upstreamFar.shutdownWrite()
        let recorder = Recorder(base: base)
        let group = RelayGroup() // the relay keeps an unowned reference: the group outlives it
        let relay = Relay(base: base, clientFD: clientNear,
                          options: RelayOptions(highWatermark: 64 << 10, idleTimeoutMicroseconds: 0),
                          delegate: recorder, group: group)
        // Attached on the loop's first pass, after the client's report.
        let attach = Timer(base: base) { relay.attach(upstream: upstreamNear) }
        attach.schedule(after: 0)
        let timer = watchdog(base, relay)
        base.run()
        timer.cancel()
        #expect(recorder.closed == .completed)
        #expect(String(decoding: try clientFar.receiveAll(), as: UTF8.self) == "banner")
        #expect(String(decoding: try upstreamFar.receiveAll(), as: UTF8.self) == "request")
        withExtendedLifetime(group) {}
    }

    @Test func aBackendThatSpeaksFirstAndClosesReachesTheClientThroughTheConnector() throws {
        let base = EventBase()
        let (clientNear, clientFar) = try tcpPair()
        let listening = try Socket.listen(Endpoint(ipv4: (127, 0, 0, 1), port: 0), reusePort: false, backlog: 4)
        defer { Socket.close(listening) }
        let port = try Socket.localEndpoint(listening).port
        let recorder = Recorder(base: base)
        let group = RelayGroup() // the relay keeps an unowned reference: the group outlives it
        let relay = Relay(base: base, clientFD: clientNear,
                          options: RelayOptions(highWatermark: 64 << 10, idleTimeoutMicroseconds: 0),
                          delegate: recorder, group: group)
        let connector = Connector(base: base, leg: 0)
        let attacher = AttachOnConnect(relay: relay)
        connector.delegate = attacher
        #expect(connector.start(Endpoint(ipv4: (127, 0, 0, 1), port: port), timeoutMicroseconds: 5_000_000) == nil)
        // The backend greets and closes before the loop first looks at the connect, so the connect's report
        // says readable too: the connector checks SO_ERROR, and the relay reads the greeting at once.
        let backend = try accepted(from: listening)
        _ = "220 ready\r\n".withCString { send(backend, $0, 11, 0) }
        Glibc.close(backend)
        let received = Received()
        let client = LoopThread.spawn(name: "client") {
            received.set("greeting", (try? clientFar.receiveAll()) ?? [])
            clientFar.shutdownWrite()
        }
        let timer = watchdog(base, relay)
        base.run()
        client.join()
        timer.cancel()
        #expect(attacher.error == nil)
        #expect(String(decoding: received["greeting"], as: UTF8.self) == "220 ready\r\n")
        #expect(recorder.closed == .completed)
        #expect(relay.bytesToClient == 11)
        withExtendedLifetime((connector, group)) {}
    }
}
