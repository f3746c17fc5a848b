package io.careloop.sandbox;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.provider.IJpaSystemProvider;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.provider.SubscriptionTriggeringProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.jpa.subscription.match.config.SubscriptionProcessorConfig;
import ca.uhn.fhir.jpa.subscription.match.deliver.email.IEmailSender;
import ca.uhn.fhir.jpa.subscription.submit.config.SubscriptionSubmitterConfig;
import ca.uhn.fhir.jpa.subscription.util.SubscriptionDebugLogInterceptor;
import ca.uhn.fhir.jpa.topic.SubscriptionTopicConfig;
import ca.uhn.fhir.narrative2.NullNarrativeGenerator;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.interceptor.LoggingInterceptor;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import jakarta.persistence.EntityManagerFactory;
import java.util.Map;
import javax.sql.DataSource;
import org.hl7.fhir.dstu2.model.Subscription.SubscriptionChannelType;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.autoconfigure.orm.jpa.JpaProperties;
import org.springframework.boot.context.properties.EnableConfigurationProperties;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;

/**
 * Wires the HAPI FHIR JPA server (R4) and its subscription machinery.
 *
 * <p>{@link HapiJpaConfig} supplies the search/paging support beans ({@code IFulltextSearchSvc},
 * {@code IStaleSearchDeletingSvc}, {@code DatabaseBackedPagingProvider}, {@code IResourceSupportedSvc},
 * {@code myResourceCountsCache}, {@code IHSearchSortHelper}); we supply persistence, the storage and
 * subscription settings, and the servlet. The {@code hapi.fhir.*} property names match the official
 * {@code hapiproject/hapi} image so docker-compose.yml and application.yaml stay comparable.
 */
@Configuration
@EnableConfigurationProperties(JpaProperties.class)
@Import({
	JpaR4Config.class,
	HapiJpaConfig.class,
	ThreadPoolFactoryConfig.class,
	JpaBatch2Config.class,
	Batch2JobsConfig.class,
	SubscriptionSubmitterConfig.class,
	SubscriptionProcessorConfig.class,
	SubscriptionChannelConfig.class,
	SubscriptionTopicConfig.class
})
public class FhirServerConfig {

	private static final Logger ourLog = LoggerFactory.getLogger(FhirServerConfig.class);

	@Value("${hapi.fhir.fhir_version:R4}")
	private String fhirVersion;

	@Value("${hapi.fhir.subscription.resthook_enabled:true}")
	private boolean resthookEnabled;

	@Value("${hapi.fhir.subscription.polling_interval_ms:1000}")
	private long pollingIntervalMs;

	@Value("${hapi.fhir.subscription.immediately_queued:true}")
	private boolean immediatelyQueued;

	@Value("${hapi.fhir.allow_external_references:true}")
	private boolean allowExternalReferences;

	@Value("${hapi.fhir.server_address:}")
	private String serverAddress;

	@Bean
	public JpaStorageSettings jpaStorageSettings() {
		if (!"R4".equalsIgnoreCase(fhirVersion)) {
			throw new IllegalStateException(
					"careloop sandbox only supports hapi.fhir.fhir_version=R4, got " + fhirVersion);
		}
		JpaStorageSettings settings = new JpaStorageSettings();
		settings.setAllowExternalReferences(allowExternalReferences);
		// Clients (careloop, the seeder) PUT resources with their own ids.
		settings.setResourceClientIdStrategy(JpaStorageSettings.ClientIdStrategyEnum.ALPHANUMERIC);
		// Let `_history` and `_lastUpdated` work on every write, including no-op updates.
		settings.setSuppressUpdatesWithNoChange(false);
		return settings;
	}

	/**
	 * Subscription settings. Without at least one supported channel type, HAPI never starts the
	 * matching channel (ResourceModifiedSubmitterSvc) and Subscriptions stay "requested" forever.
	 */
	@Bean
	public SubscriptionSettings subscriptionSettings() {
		SubscriptionSettings settings = new SubscriptionSettings();
		if (resthookEnabled) {
			settings.addSupportedSubscriptionType(SubscriptionChannelType.RESTHOOK);
		}
		settings.setSubscriptionIntervalInMs(pollingIntervalMs);
		settings.setSubscriptionChangeQueuedImmediately(immediatelyQueued);
		ourLog.info(
				"Subscriptions: resthook={} polling_interval_ms={} immediately_queued={}",
				resthookEnabled,
				pollingIntervalMs,
				immediatelyQueued);
		return settings;
	}

	/**
	 * SubscriptionProcessorConfig requires an e-mail sender even when e-mail channels are off; the
	 * sandbox has no SMTP, so e-mail deliveries are logged and dropped.
	 */
	@Bean
	public IEmailSender emailSender() {
		return details -> ourLog.warn("E-mail subscriptions are not supported in the sandbox; dropped {}", details);
	}

	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings();
	}

	@Primary
	@Bean
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			ConfigurableListableBeanFactory beanFactory,
			FhirContext fhirContext,
			JpaStorageSettings storageSettings,
			JpaProperties jpaProperties,
			DataSource dataSource) {
		LocalContainerEntityManagerFactoryBean factory =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(beanFactory, fhirContext, storageSettings);
		Map<String, String> props = jpaProperties.getProperties();
		props.putIfAbsent("hibernate.hbm2ddl.auto", "update");
		props.putIfAbsent("hibernate.jdbc.batch_size", "20");
		props.putIfAbsent("hibernate.cache.use_query_cache", "false");
		props.putIfAbsent("hibernate.cache.use_second_level_cache", "false");
		props.putIfAbsent("hibernate.cache.use_structured_entries", "false");
		props.putIfAbsent("hibernate.cache.use_minimal_puts", "false");
		props.putIfAbsent("hibernate.search.enabled", "false");
		props.putIfAbsent("hibernate.archive.scanner", "org.hibernate.boot.archive.scan.internal.DisabledScanner");
		props.putIfAbsent(
				"hibernate.physical_naming_strategy",
				"org.hibernate.boot.model.naming.CamelCaseToUnderscoresNamingStrategy");
		props.putIfAbsent(
				"hibernate.implicit_naming_strategy",
				"org.springframework.boot.orm.jpa.hibernate.SpringImplicitNamingStrategy");
		if (!props.containsKey("hibernate.dialect")) {
			throw new IllegalStateException(
					"spring.jpa.properties.hibernate.dialect must be set (e.g. "
							+ "ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect)");
		}
		factory.setPersistenceUnitName("HAPI_PU");
		factory.setJpaPropertyMap(props);
		factory.setDataSource(dataSource);
		return factory;
	}

	@Primary
	@Bean
	public JpaTransactionManager transactionManager(EntityManagerFactory entityManagerFactory) {
		JpaTransactionManager tm = new JpaTransactionManager();
		tm.setEntityManagerFactory(entityManagerFactory);
		return tm;
	}

	@Bean
	public LoggingInterceptor loggingInterceptor() {
		LoggingInterceptor interceptor = new LoggingInterceptor();
		interceptor.setLoggerName("fhirtest.access");
		interceptor.setMessageFormat(
				"${requestVerb} ${servletPath}${requestPath}?${requestParameters} -> ${processingTimeMillis} ms");
		interceptor.setErrorMessageFormat("ERROR ${requestVerb} ${requestUrl} ${exceptionMessage}");
		interceptor.setLogExceptions(true);
		return interceptor;
	}

	@Bean
	public RestfulServer restfulServer(
			IFhirSystemDao<?, ?> systemDao,
			ResourceProviderFactory resourceProviderFactory,
			IJpaSystemProvider jpaSystemProvider,
			SubscriptionTriggeringProvider subscriptionTriggeringProvider,
			JpaStorageSettings storageSettings,
			SubscriptionSettings subscriptionSettings,
			ISearchParamRegistry searchParamRegistry,
			IValidationSupport validationSupport,
			DatabaseBackedPagingProvider pagingProvider,
			LoggingInterceptor loggingInterceptor) {
		FhirContext ctx = systemDao.getContext();
		ctx.setNarrativeGenerator(new NullNarrativeGenerator());

		RestfulServer server = new RestfulServer(ctx);
		server.registerProviders(resourceProviderFactory.createProviders());
		server.registerProvider(jpaSystemProvider);
		server.registerProvider(subscriptionTriggeringProvider);

		JpaCapabilityStatementProvider capabilities = new JpaCapabilityStatementProvider(
				server, systemDao, storageSettings, searchParamRegistry, validationSupport);
		capabilities.setImplementationDescription("careloop HAPI FHIR sandbox (R4)");
		server.setServerConformanceProvider(capabilities);

		server.setPagingProvider(pagingProvider);
		server.setDefaultPrettyPrint(false);
		server.registerInterceptor(loggingInterceptor);
		if (!subscriptionSettings.getSupportedSubscriptionTypes().isEmpty()) {
			server.registerInterceptor(new SubscriptionDebugLogInterceptor());
		}
		if (serverAddress != null && !serverAddress.isBlank()) {
			server.setServerAddressStrategy(
					new ca.uhn.fhir.rest.server.HardcodedServerAddressStrategy(serverAddress));
		}
		return server;
	}

	@Bean
	public ServletRegistrationBean<RestfulServer> fhirServletRegistration(RestfulServer restfulServer) {
		ServletRegistrationBean<RestfulServer> registration =
				new ServletRegistrationBean<>(restfulServer, "/fhir/*");
		registration.setName("fhirServlet");
		registration.setLoadOnStartup(1);
		return registration;
	}
}
