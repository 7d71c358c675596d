//! What the Kafka clients (the consumer and the DLQ producer) log about their brokers.
//! librdkafka reports a lost broker several ways at once (its own `FAIL` log lines, a
//! client error per connection attempt, the same error again on the consumer's queue),
//! about ten lines a second during an outage. The consumer says once that its brokers are
//! unreachable and once that it reaches them again; the rest goes to debug.

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Whether `e` says a broker connection failed or was lost (the outage itself, which the
/// consumer reports once).
pub(super) fn is_transport(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
        )
    )
}

/// One of librdkafka's own log lines: connection failures (facility `FAIL`) at debug,
/// the rest at its level.
pub(super) fn librdkafka(level: RDKafkaLogLevel, facility: &str, message: &str) {
    if facility == "FAIL" {
        tracing::debug!(target: "librdkafka", "{facility} {message}");
        return;
    }
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{facility} {message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{facility} {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", "{facility} {message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{facility} {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_brokers_are_transport_errors_and_others_are_not() {
        let e = |c| KafkaError::Global(c);
        assert!(is_transport(&e(RDKafkaErrorCode::BrokerTransportFailure)));
        assert!(is_transport(&e(RDKafkaErrorCode::AllBrokersDown)));
        assert!(is_transport(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::AllBrokersDown
        )));
        assert!(!is_transport(&e(RDKafkaErrorCode::UnknownTopicOrPartition)));
        assert!(!is_transport(&e(
            RDKafkaErrorCode::GroupAuthorizationFailed
        )));
    }
}
