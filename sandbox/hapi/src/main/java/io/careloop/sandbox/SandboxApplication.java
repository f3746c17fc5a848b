package io.careloop.sandbox;

import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.autoconfigure.elasticsearch.ElasticsearchRestClientAutoConfiguration;
import org.springframework.boot.autoconfigure.quartz.QuartzAutoConfiguration;
import org.springframework.boot.autoconfigure.thymeleaf.ThymeleafAutoConfiguration;

/**
 * careloop HAPI FHIR sandbox: an R4 JPA server (H2 by default) with rest-hook
 * subscriptions, served at {@code http://localhost:8090/fhir}.
 *
 * <p>Run: {@code java -Xmx1g -jar target/careloop-hapi-sandbox.jar [--server.port=8090]}.
 *
 * <p>HAPI schedules its own jobs (Quartz is driven by HAPI, not Spring Boot), so Spring Boot's
 * Quartz auto-configuration is excluded, as are Thymeleaf and the Elasticsearch REST client.
 */
@SpringBootApplication(
		exclude = {
			QuartzAutoConfiguration.class,
			ThymeleafAutoConfiguration.class,
			ElasticsearchRestClientAutoConfiguration.class
		})
public class SandboxApplication {

	public static void main(String[] args) {
		SpringApplication.run(SandboxApplication.class, args);
	}
}
