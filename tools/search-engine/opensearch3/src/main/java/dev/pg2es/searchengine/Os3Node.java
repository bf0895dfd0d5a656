package dev.pg2es.searchengine;

import static org.codelibs.opensearch.runner.OpenSearchRunner.newConfigs;

import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.codelibs.opensearch.runner.OpenSearchRunner;
import org.opensearch.node.Node;

/**
 * One local OpenSearch 3.x node for development and tests, bound to 127.0.0.1.
 *
 * <p>Usage: {@code Os3Node <http-port> <transport-port> <base-path> <cluster-name>}; each argument can also
 * come from the system properties {@code http.port}, {@code transport.port}, {@code base.path},
 * {@code cluster.name}. Runs until SIGTERM/SIGINT, then closes the node cleanly.
 */
public final class Os3Node {

    private Os3Node() {
    }

    public static void main(final String[] args) throws InterruptedException {
        final int httpPort = Integer.parseInt(arg(args, 0, "http.port", "9204"));
        final int transportPort = Integer.parseInt(arg(args, 1, "transport.port", "9304"));
        final String basePath = arg(args, 2, "base.path", ".stack/os3");
        final String clusterName = arg(args, 3, "cluster.name", "pg2es-os3");

        final OpenSearchRunner runner = new OpenSearchRunner();
        // Use the requested port as is; the runner would otherwise probe for a free one.
        runner.setMaxHttpPort(-1);
        runner.onBuild((index, settings) -> settings
                .put("network.host", "127.0.0.1")
                .put("http.port", httpPort)
                .put("transport.port", transportPort)
                .put("discovery.type", "single-node")
                .put("cluster.routing.allocation.disk.threshold_enabled", false)
                .put("node.name", clusterName + "-node"));

        final CountDownLatch closed = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.out.println("pg2es: closing opensearch node");
            final Node node = runner.node();
            try {
                runner.close();
                if (node != null && !node.awaitClose(30, TimeUnit.SECONDS)) {
                    System.out.println("pg2es: opensearch node did not close within 30s");
                }
            } catch (final Exception e) {
                e.printStackTrace();
            } finally {
                closed.countDown();
            }
        }, "pg2es-shutdown"));

        try {
            runner.build(newConfigs()
                    .basePath(basePath)
                    .numOfNode(1)
                    .baseHttpPort(httpPort - 1) // the runner gives node n the port base + n
                    .clusterName(clusterName));
        } catch (final RuntimeException e) {
            e.printStackTrace();
            System.exit(1);
        }
        System.out.println("pg2es: opensearch listening on http://127.0.0.1:" + httpPort
                + " (cluster " + clusterName + ", data under " + basePath + ")");
        closed.await();
    }

    private static String arg(final String[] args, final int index, final String property, final String fallback) {
        return args.length > index ? args[index] : System.getProperty(property, fallback);
    }
}
