import FulcrumCore
import Testing

@Suite struct ValueTests {
    @Test func durations() {
        #expect(ConfigValue.duration("250ms") == .milliseconds(250))
        #expect(ConfigValue.duration("2s") == .seconds(2))
        #expect(ConfigValue.duration("1.5s") == .milliseconds(1500))
        #expect(ConfigValue.duration("5m") == .seconds(300))
        #expect(ConfigValue.duration("1h") == .seconds(3600))
        #expect(ConfigValue.duration("100us") == .microseconds(100))
        for bad in ["5", "s", "-1s", "1 minute", "1.2.3s", "ms"] {
            #expect(ConfigValue.duration(bad) == nil, "\(bad)")
        }
        #expect(Duration.milliseconds(250).configText == "250ms")
        #expect(Duration.seconds(600).configText == "10m")
    }

    @Test func sizes() {
        #expect(ConfigValue.size("16384") == 16384)
        #expect(ConfigValue.size("64KiB") == 65536)
        #expect(ConfigValue.size("1MiB") == 1 << 20)
        #expect(ConfigValue.size("512B") == 512)
        #expect(ConfigValue.size("lots") == nil)
        #expect(ConfigValue.size("-1") == nil)
        #expect(sizeText(65536) == "64KiB")
    }

    @Test func addresses() throws {
        #expect(try ConfigValue.address("127.0.0.1:7000").get() == .ipv4((127, 0, 0, 1), port: 7000))
        #expect(try ConfigValue.address("localhost:7000").get() == .ipv4((127, 0, 0, 1), port: 7000))
        let v6 = try ConfigValue.address("[::1]:7000").get()
        #expect(v6.description == "[::1]:7000")
        #expect(try ConfigValue.address("[fe80::1:2]:1").get().description == "[fe80::1:2]:1")
        #expect(ConfigValue.address("127.0.0.1") == .failure(.malformed))
        #expect(ConfigValue.address("127.0.0.1:65536") == .failure(.portOutOfRange(65536)))
        #expect(ConfigValue.address("redis:6379") == .failure(.hostname("redis")))
        #expect(ConfigValue.address("::1:7000") == .failure(.malformed))
    }
}
