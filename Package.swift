// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "etl-job",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "etl-job", targets: ["etl-job"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // C libraries: a module map and a one-line shim each, nothing else.
        .systemLibrary(
            name: "CMongoc", pkgConfig: "libmongoc-1.0",
            providers: [.apt(["libmongoc-dev", "libbson-dev"])]),
        .systemLibrary(
            name: "CLMDB", pkgConfig: "lmdb",
            providers: [.apt(["liblmdb-dev"])]),
        .systemLibrary(
            name: "CLibPQ", pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]),
        .systemLibrary(
            name: "CZlib", pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]),
        // glibc's allocator knobs (mallopt), for the executable only.
        .systemLibrary(name: "CMalloc"),

        // Pure Swift: batching, worker pools, the manager, metrics.
        .target(name: "ETLCore"),

        // Thin owners of the C handles.
        .target(name: "Queue", dependencies: ["CLMDB", "CZlib", "ETLCore"]),
        .target(name: "Mongo", dependencies: ["CMongoc", "ETLCore"]),
        .target(name: "Postgres", dependencies: ["CLibPQ", "ETLCore"]),

        // The users pipeline: BSON -> 15 tables, schema, generator, job.
        .target(
            name: "Users",
            dependencies: [
                "ETLCore", "Queue", "Mongo", "Postgres",
                .product(name: "Logging", package: "swift-log"),
            ]),

        .executableTarget(
            name: "etl-job",
            dependencies: [
                "Users", "ETLCore", "Queue", "Mongo", "Postgres", "CMalloc",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]),

        .testTarget(name: "ETLCoreTests", dependencies: ["ETLCore", "Queue", "Users", "Mongo"]),
        .testTarget(name: "IntegrationTests", dependencies: ["Users", "Queue", "Mongo", "Postgres", "ETLCore"]),
    ]
)
