package dev.pg2es.searchengine;

import static org.codelibs.elasticsearch.runner.ElasticsearchClusterRunner.newConfigs;

import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.codelibs.elasticsearch.runner.ElasticsearchClusterRunner;
import org.elasticsearch.node.Node;

/**
 * One local Elasticsearch 7.10 node for development and tests, bound to 127.0.0.1.
 *
 * <p>Usage: {@code EsNode <http-port> <transport-port> <base-path> <cluster-name>}; each argument can also
 * come from the system properties {@code http.port}, {@code transport.port}, {@code base.path},
 * {@code cluster.name}. Runs until SIGTERM/SIGINT, then closes the node cleanly.
 */
public final class EsNode {

    private EsNode() {
    }

    public static void main(final String[] args) throws InterruptedException {
        final int httpPort = Integer.parseInt(arg(args, 0, "http.port", "9200"));
        final int transportPort = Integer.parseInt(arg(args, 1, "transport.port", "9300"));
        final String basePath = arg(args, 2, "base.path", ".stack/es");
        final String clusterName = arg(args, 3, "cluster.name", "pg2es-es");

        final ElasticsearchClusterRunner runner = new ElasticsearchClusterRunner();
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
            System.out.println("pg2es: closing elasticsearch node");
            final Node node = runner.node();
            try {
                runner.close();
                if (node != null && !node.awaitClose(30, TimeUnit.SECONDS)) {
                    System.out.println("pg2es: elasticsearch node did not close within 30s");
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
        System.out.println("pg2es: elasticsearch listening on http://127.0.0.1:" + httpPort
                + " (cluster " + clusterName + ", data under " + basePath + ")");
        closed.await();
    }

    private static String arg(final String[] args, final int index, final String property, final String fallback) {
        return args.length > index ? args[index] : System.getProperty(property, fallback);
    }
}
