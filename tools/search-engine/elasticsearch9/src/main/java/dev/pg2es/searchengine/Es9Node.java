package dev.pg2es.searchengine;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.Comparator;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.jar.JarFile;
import java.util.stream.Stream;

import org.elasticsearch.Build;
import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.node.Node;
import org.elasticsearch.plugins.PluginsLoader;

/**
 * One local Elasticsearch 9.x node for the engine matrix, bound to 127.0.0.1, built from the jars on
 * Maven Central (no distribution archive can be downloaded here).
 *
 * <p>Usage: {@code Es9Node <http-port> <transport-port> <base-path> <cluster-name> <netty4-module-dir> <standin-jar>}.
 * The JVM must run with the server and its libraries on the module path
 * ({@code --module-path $(cat target/classpath.txt) --add-modules ALL-MODULE-PATH}), as the distribution does:
 * transport-netty4 is a named module that requires {@code org.elasticsearch.server}.
 *
 * <p>Under {@code <base-path>} it lays out a node home like the distribution's: {@code home/modules/transport-netty4}
 * (the netty jars and the module's descriptor) and {@code home/modules/pg2es-standin}, a TEST FIXTURE plugin standing
 * in for the modules that are not on Maven Central (analysis-common's {@code stemmer}, rest-root's {@code GET /});
 * see {@link dev.pg2es.searchengine.standin.StandInPlugin}. Data and logs go to {@code <base-path>/data} and
 * {@code <base-path>/logs}. The bootstrap (security manager, entitlements, bootstrap checks) is skipped: this is a
 * development node, never a production one. Runs until SIGTERM/SIGINT, then closes the node cleanly.
 */
public final class Es9Node {

    private Es9Node() {
    }

    public static void main(final String[] args) throws Exception {
        if (args.length < 6) {
            System.err.println("usage: Es9Node <http-port> <transport-port> <base-path> <cluster-name> <netty4-module-dir> <standin-jar>");
            System.exit(2);
        }
        final int httpPort = Integer.parseInt(args[0]);
        final int transportPort = Integer.parseInt(args[1]);
        final Path base = Path.of(args[2]).toAbsolutePath();
        final String clusterName = args[3];
        final Path nettyDir = Path.of(args[4]).toAbsolutePath();
        final Path standinJar = Path.of(args[5]).toAbsolutePath();

        final Path home = base.resolve("home");
        final Path modules = home.resolve("modules");
        deleteTree(home); // laid out anew from the build each start; data is kept
        Files.createDirectories(home.resolve("config"));
        Files.createDirectories(home.resolve("plugins"));
        layoutNetty4(nettyDir, modules.resolve("transport-netty4"));
        layoutStandin(standinJar, modules.resolve("pg2es-standin"));

        final Settings settings = Settings.builder()
                .put("path.home", home.toString())
                .put("path.data", base.resolve("data").toString())
                .put("path.logs", base.resolve("logs").toString())
                .put("cluster.name", clusterName)
                .put("node.name", clusterName + "-node")
                .put("network.host", "127.0.0.1")
                .put("http.port", httpPort)
                .put("transport.port", transportPort)
                .put("discovery.type", "single-node")
                .put("cluster.routing.allocation.disk.threshold_enabled", false)
                .put("action.auto_create_index", true)
                .build();

        // The node's own log lines go to the console (stack.sh sends it to .stack/logs/<engine>.log).
        Files.writeString(home.resolve("config/log4j2.properties"), String.join("\n",
                "status = error",
                "appender.console.type = Console",
                "appender.console.name = console",
                "appender.console.layout.type = PatternLayout",
                "appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] [%node_name]%marker %m%n",
                "rootLogger.level = info",
                "rootLogger.appenderRef.console.ref = console",
                ""));
        final Environment environment = new Environment(settings, home.resolve("config"));
        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName(clusterName + "-node");
        LogConfigurator.setClusterName(clusterName);
        LogConfigurator.configure(environment, true);

        final PluginsLoader loader = PluginsLoader.createPluginsLoader(
                PluginsLoader.loadModulesBundles(environment.modulesDir(), false),
                PluginsLoader.loadPluginsBundles(environment.pluginsDir(), false),
                Map.of());
        final Node node = new Node(environment, loader);

        final CountDownLatch closed = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.out.println("pg2es: closing elasticsearch node");
            try {
                node.prepareForClose();
                node.close();
                if (!node.awaitClose(30, TimeUnit.SECONDS)) {
                    System.out.println("pg2es: elasticsearch node did not close within 30s");
                }
            } catch (final Exception e) {
                e.printStackTrace();
            } finally {
                closed.countDown();
            }
        }, "pg2es-shutdown"));

        try {
            node.start();
        } catch (final Exception e) {
            e.printStackTrace();
            System.exit(1);
        }
        System.out.println("pg2es: elasticsearch " + Build.current().qualifiedVersion() + " listening on http://127.0.0.1:"
                + httpPort + " (cluster " + clusterName + ", data under " + base + ")");
        closed.await();
    }

    /** modules/transport-netty4: its jars, and the descriptor the plugin jar carries inside. */
    private static void layoutNetty4(final Path from, final Path to) throws IOException {
        Files.createDirectories(to);
        Path pluginJar = null;
        try (Stream<Path> jars = Files.list(from)) {
            for (final Path jar : (Iterable<Path>) jars::iterator) {
                Files.copy(jar, to.resolve(jar.getFileName()), StandardCopyOption.REPLACE_EXISTING);
                if (jar.getFileName().toString().startsWith("transport-netty4-")) {
                    pluginJar = jar;
                }
            }
        }
        if (pluginJar == null) {
            throw new IllegalStateException("no transport-netty4 jar in " + from);
        }
        for (final String file : Set.of("plugin-descriptor.properties", "entitlement-policy.yaml")) {
            try (JarFile jar = new JarFile(pluginJar.toFile())) {
                final var entry = jar.getEntry("META-INF/es-plugins/transport-netty4/" + file);
                if (entry != null) {
                    try (InputStream in = jar.getInputStream(entry)) {
                        Files.copy(in, to.resolve(file), StandardCopyOption.REPLACE_EXISTING);
                    }
                }
            }
        }
    }

    /** modules/pg2es-standin: the test fixture plugin's jar and a descriptor for this server version. */
    private static void layoutStandin(final Path jar, final Path to) throws IOException {
        Files.createDirectories(to);
        Files.copy(jar, to.resolve(jar.getFileName()), StandardCopyOption.REPLACE_EXISTING);
        Files.writeString(to.resolve("plugin-descriptor.properties"), String.join("\n",
                "description=pg2es TEST FIXTURE: stand-in for analysis-common (stemmer) and rest-root (GET /), not on Maven Central",
                "version=" + Build.current().version(),
                "name=pg2es-standin",
                "classname=dev.pg2es.searchengine.standin.StandInPlugin",
                "java.version=" + Runtime.version().feature(),
                "elasticsearch.version=" + Build.current().version(),
                ""));
    }

    private static void deleteTree(final Path dir) throws IOException {
        if (!Files.exists(dir)) {
            return;
        }
        try (Stream<Path> paths = Files.walk(dir)) {
            for (final Path p : (Iterable<Path>) paths.sorted(Comparator.reverseOrder())::iterator) {
                Files.delete(p);
            }
        }
    }
}
