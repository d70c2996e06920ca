// POSTs a JSON body the way INCEpTION's ExternalRecommender does (JDK HttpClient, default HTTP/2
// version, so on http:// it offers an h2c upgrade), then prints the status line and the body.
// Usage: java InceptionClient.java URL BODY_FILE
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;

public class InceptionClient {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(30)).build();
        HttpRequest request = HttpRequest.newBuilder()
                .uri(URI.create(args[0]))
                .header("Content-Type", "application/json")
                .timeout(Duration.ofSeconds(30))
                .POST(HttpRequest.BodyPublishers.ofString(Files.readString(Path.of(args[1]))))
                .build();
        HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());
        System.out.println(response.statusCode() + " " + response.version());
        System.out.print(response.body());
    }
}
