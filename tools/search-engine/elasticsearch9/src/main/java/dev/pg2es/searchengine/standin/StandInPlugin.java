package dev.pg2es.searchengine.standin;

import java.util.Collection;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.Predicate;
import java.util.function.Supplier;

import org.apache.lucene.analysis.TokenStream;
import org.apache.lucene.analysis.en.EnglishPossessiveFilter;
import org.apache.lucene.analysis.en.PorterStemFilter;
import org.apache.lucene.analysis.snowball.SnowballFilter;
import org.elasticsearch.Build;
import org.elasticsearch.cluster.node.DiscoveryNodes;
import org.elasticsearch.cluster.service.ClusterService;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.features.NodeFeature;
import org.elasticsearch.index.IndexSettings;
import org.elasticsearch.index.analysis.AbstractTokenFilterFactory;
import org.elasticsearch.index.analysis.TokenFilterFactory;
import org.elasticsearch.indices.analysis.AnalysisModule.AnalysisProvider;
import org.elasticsearch.plugins.ActionPlugin;
import org.elasticsearch.plugins.AnalysisPlugin;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.rest.RestChannel;
import org.elasticsearch.rest.RestHandler;
import org.elasticsearch.rest.RestRequest;
import org.elasticsearch.rest.RestResponse;
import org.elasticsearch.rest.RestStatus;
import org.elasticsearch.client.internal.node.NodeClient;
import org.elasticsearch.xcontent.XContentBuilder;
import org.tartarus.snowball.ext.RussianStemmer;

/**
 * TEST FIXTURE, not a product: a stand-in for the two Elasticsearch 9 modules that are not published on
 * Maven Central, so that the local test node (Es9Node) can take the movies index definition and answer
 * {@code GET /} like a real node. Never ship it or run it in front of real data.
 *
 * <ul>
 * <li>analysis-common: the {@code stemmer} token filter, for exactly the languages the index uses, with the
 * same Lucene filters the real StemmerTokenFilterFactory picks for them: {@code english} (PorterStemFilter),
 * {@code possessive_english} (EnglishPossessiveFilter), {@code russian} (SnowballFilter + RussianStemmer).
 * Any other language is refused, so a silent difference cannot creep in. {@code lowercase} and {@code stop}
 * come from the server itself (pre-configured lowercase, the stop filter with {@code _english_} and
 * {@code _russian_} lists).</li>
 * <li>rest-root: {@code GET /} and {@code HEAD /} with the real response's fields (name, cluster, version,
 * tagline).</li>
 * </ul>
 * The Postman suite must give the same hit counts on this node as on Elasticsearch 7.10.2 (make acceptance).
 */
public final class StandInPlugin extends Plugin implements AnalysisPlugin, ActionPlugin {

    private final AtomicReference<ClusterService> clusterService = new AtomicReference<>();

    @Override
    public Collection<?> createComponents(final PluginServices services) {
        clusterService.set(services.clusterService());
        return List.of();
    }

    @Override
    public Map<String, AnalysisProvider<TokenFilterFactory>> getTokenFilters() {
        return Map.of("stemmer", StemmerFactory::new);
    }

    @Override
    public Collection<RestHandler> getRestHandlers(final RestHandlersServices services, final Supplier<DiscoveryNodes> nodes,
            final Predicate<NodeFeature> features) {
        return List.of(new MainHandler(clusterService));
    }

    /** analysis-common's stemmer, for the languages of the movies index only. */
    static final class StemmerFactory extends AbstractTokenFilterFactory {
        private final String language;

        StemmerFactory(final IndexSettings indexSettings, final Environment env, final String name, final Settings settings) {
            super(name);
            this.language = settings.get("language", settings.get("name", "porter")).toLowerCase(Locale.ROOT);
            switch (language) {
                case "english", "porter", "possessive_english", "russian" -> { }
                default -> throw new IllegalArgumentException("pg2es stand-in stemmer (test fixture): language ["
                        + language + "] is not implemented; only english, porter, possessive_english, russian");
            }
        }

        @Override
        public TokenStream create(final TokenStream tokenStream) {
            return switch (language) {
                case "english", "porter" -> new PorterStemFilter(tokenStream);
                case "possessive_english" -> new EnglishPossessiveFilter(tokenStream);
                case "russian" -> new SnowballFilter(tokenStream, new RussianStemmer());
                default -> throw new IllegalStateException(language);
            };
        }
    }

    /** rest-root's GET / and HEAD /. */
    static final class MainHandler implements RestHandler {
        private final AtomicReference<ClusterService> clusterService;

        MainHandler(final AtomicReference<ClusterService> clusterService) {
            this.clusterService = clusterService;
        }

        @Override
        public List<Route> routes() {
            return List.of(new Route(RestRequest.Method.GET, "/"), new Route(RestRequest.Method.HEAD, "/"));
        }

        @Override
        public void handleRequest(final RestRequest request, final RestChannel channel, final NodeClient client) throws Exception {
            final ClusterService cs = clusterService.get();
            final Build build = Build.current();
            final XContentBuilder b = channel.newBuilder();
            b.startObject();
            b.field("name", cs.getNodeName());
            b.field("cluster_name", cs.getClusterName().value());
            b.field("cluster_uuid", cs.state().metadata().clusterUUID());
            b.startObject("version")
                    .field("number", build.qualifiedVersion())
                    .field("build_flavor", build.flavor())
                    .field("build_type", build.type().displayName())
                    .field("build_hash", build.hash())
                    .field("build_date", build.date())
                    .field("build_snapshot", build.isSnapshot())
                    .field("lucene_version", org.apache.lucene.util.Version.LATEST.toString())
                    .field("minimum_wire_compatibility_version", build.minWireCompatVersion())
                    .field("minimum_index_compatibility_version", build.minIndexCompatVersion())
                    .endObject();
            b.field("tagline", "You Know, for Search");
            b.endObject();
            channel.sendResponse(new RestResponse(RestStatus.OK, b));
        }
    }
}
