import Foundation
import NostrService
import NostrServiceTesting
import Testing

@Suite("Private files: mode 0600 from the first byte")
struct PrivateFileTests {
    @Test("a new file has mode 0600 and its contents; no temporary file remains; an existing file is never replaced")
    func create() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("key").path
        try PrivateFile.create(atPath: path, contents: Array("secret\n".utf8))
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        #expect(FileManager.default.contents(atPath: path) == Data("secret\n".utf8))
        #expect(throws: KeyFileError.self) { try PrivateFile.create(atPath: path, contents: Array("other\n".utf8)) }
        #expect(FileManager.default.contents(atPath: path) == Data("secret\n".utf8))
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["key"])

        let database = directory.appendingPathComponent("db").path
        try PrivateFile.createIfMissing(atPath: database)
        try PrivateFile.createIfMissing(atPath: database)
        #expect((try FileManager.default.attributesOfItem(atPath: database)[.posixPermissions] as? NSNumber)?.intValue == 0o600)
    }
}

@Suite("The serve lock on a data directory")
struct ServeLockTests {
    @Test("shared holders coexist and are seen; an exclusive one is refused while another holds it, and taken once it is gone")
    func locks() async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        #expect(await !ServeLock.isHeld(in: directory))
        try await ServeLock.holding(in: directory) {
            try await ServeLock.holding(in: directory) {
                #expect(await ServeLock.isHeld(in: directory))
            }
            await #expect(throws: ServeLockError.self) { try await ServeLock.holding(in: directory, exclusive: true) {} }
        }
        try await ServeLock.holding(in: directory, exclusive: true) {
            #expect(await ServeLock.isHeld(in: directory))
            do {
                _ = try await ServeLock.holding(in: directory, exclusive: true) { Issue.record("a second exclusive holder") }
            } catch let error as ServeLockError {
                #expect(error.message.hasPrefix("another serve is running on"), "\(error)")
            }
        }
        #expect(await !ServeLock.isHeld(in: directory))
    }
}
