"""Alarms: Prefect automations kept in ``automations/`` and applied by ``p3s alarms apply``.

* :mod:`p3s.alarms.ranges` turns numeric thresholds into the glob patterns triggers match;
* :mod:`p3s.alarms.targets` saves the notification blocks (webhook, Slack/Mattermost, e-mail);
* :mod:`p3s.alarms.documents` reads the alarm documents and renders them into automations;
* :mod:`p3s.alarms.apply` creates, updates and prunes them on the Prefect server.
"""
