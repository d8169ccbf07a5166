//! Which endpoints a message goes to: event-type filters and channels.

/// An endpoint takes a message when its event-type filter is absent or names the type,
/// and its channel list is absent or shares a channel with the message.
pub fn endpoint_accepts(
    filter_types: Option<&[String]>,
    endpoint_channels: Option<&[String]>,
    event_type: &str,
    message_channels: Option<&[String]>,
) -> bool {
    let type_ok = filter_types.is_none_or(|types| types.iter().any(|t| t == event_type));
    let channel_ok = endpoint_channels
        .is_none_or(|wanted| message_channels.is_some_and(|given| given.iter().any(|c| wanted.contains(c))));
    type_ok && channel_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn routing_table() {
        let paid = v(&["payment.succeeded"]);
        let eu = v(&["eu"]);
        let us = v(&["us"]);
        // (filter types, endpoint channels, event type, message channels, accepted)
        type Row<'a> = (Option<&'a [String]>, Option<&'a [String]>, &'a str, Option<&'a [String]>, bool);
        let rows: [Row; 7] = [
            (None, None, "payment.succeeded", None, true),
            (Some(&paid), None, "payment.succeeded", None, true),
            (Some(&paid), None, "charge.failed", None, false),
            (None, Some(&eu), "payment.succeeded", None, false),
            (None, Some(&eu), "payment.succeeded", Some(&eu), true),
            (None, Some(&eu), "payment.succeeded", Some(&us), false),
            (None, None, "payment.succeeded", Some(&us), true),
        ];
        for (types, chans, event, msg_chans, expect) in rows {
            assert_eq!(
                endpoint_accepts(types, chans, event, msg_chans),
                expect,
                "{types:?} {chans:?} {event} {msg_chans:?}"
            );
        }
    }
}
