import EventLoop
import Glibc
import Testing

@Suite(.timeLimit(.minutes(1)))
struct EventLoopTests {
    @Test func timersFireInOrderAndTheLoopEndsWhenNothingIsLeft() {
        let base = EventBase()
        var fired: [Int] = []
        let late = Timer(base: base) { fired.append(2) }
        let early = Timer(base: base) { fired.append(1) }
        late.schedule(after: 30_000)
        early.schedule(after: 1_000)
        base.run()
        #expect(fired == [1, 2])
    }

    @Test func cancelledTimerNeverFires() {
        let base = EventBase()
        var fired = false
        let timer = Timer(base: base) { fired = true }
        timer.schedule(after: 1_000)
        timer.cancel()
        base.run()
        #expect(!fired)
    }

    @Test func wakeupCarriesCommandsFromAnotherThread() throws {
        let base = EventBase()
        let pipe = try WakeupPipe()
        let sender = pipe.sender
        var received: [UInt8] = []
        let receiver = WakeupReceiver(base: base, pipe: pipe) { byte in
            received.append(byte)
            if received.count == 3 { base.exit() }
        }
        let thread = LoopThread.spawn(name: "test-sender") {
            for byte: UInt8 in [7, 8, 9] { sender.send(byte) }
        }
        base.run()
        thread.join()
        withExtendedLifetime(receiver) {}
        #expect(received == [7, 8, 9])
    }

    @Test func listeningSocketsShareAPortThroughReusePort() throws {
        let first = try Socket.listen(Endpoint(ipv4: (127, 0, 0, 1), port: 0), reusePort: true, backlog: 16)
        let port = try Socket.localEndpoint(first).port
        let second = try Socket.listen(Endpoint(ipv4: (127, 0, 0, 1), port: port), reusePort: true, backlog: 16)
        #expect(try Socket.localEndpoint(second).port == port)
        #expect(try Socket.localEndpoint(second).description == "127.0.0.1:\(port)")
        Socket.close(first)
        Socket.close(second)
        #expect(throws: SystemError.self) {
            let a = try Socket.listen(Endpoint(ipv4: (127, 0, 0, 1), port: 0), reusePort: false, backlog: 1)
            defer { Socket.close(a) }
            _ = try Socket.listen(Endpoint(ipv4: (127, 0, 0, 1), port: try Socket.localEndpoint(a).port),
                                  reusePort: false, backlog: 1)
        }
    }

    @Test func aClaimedAddressTakesThisProcessesSocketsButNoSecondClaim() throws {
        let first = try Socket.listen(Endpoint(ipv4: (127, 0, 0, 1), port: 0), reusePort: true, claim: true, backlog: 16)
        defer { Socket.close(first) }
        let port = try Socket.localEndpoint(first).port
        // The group's other sockets join it...
        let second = try Socket.listen(Endpoint(ipv4: (127, 0, 0, 1), port: port), reusePort: true, backlog: 16)
        defer { Socket.close(second) }
        // ...but a claim, as another instance would make, fails, and so does the wildcard address.
        for bytes in [(UInt8(127), UInt8(0), UInt8(0), UInt8(1)), (0, 0, 0, 0)] {
            do {
                let third = try Socket.listen(Endpoint(ipv4: bytes, port: port), reusePort: true, claim: true, backlog: 16)
                Socket.close(third)
                Issue.record("a second claim of port \(port) succeeded")
            } catch {
                #expect(error.errno == EADDRINUSE)
            }
        }
    }

    @Test func ipv6EndpointsPrintInBrackets() {
        var bytes = [UInt8](repeating: 0, count: 16)
        bytes[15] = 1
        #expect(Endpoint(ipv6: bytes, port: 7000).description == "[::1]:7000")
    }
}
