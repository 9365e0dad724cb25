import { describe, expect, it } from 'vitest';

import { fileSdTargets, findPrometheus, PrometheusNotInstalledError, prometheusConfig } from './prometheus-server.ts';

describe('a local Prometheus', () => {
  it('is configured to scrape the file-SD targets with honor_labels, at the interval asked, with the rules', () => {
    const config = JSON.parse(prometheusConfig({ targetsFile: '/tmp/p/targets.json', rulesFiles: ['/r/rules.yaml'], scrapeIntervalSeconds: 1 })) as Record<string, unknown>;
    expect(config).toEqual({
      global: { scrape_interval: '1s', evaluation_interval: '1s', scrape_timeout: '1s' },
      rule_files: ['/r/rules.yaml'],
      scrape_configs: [
        {
          job_name: 'dinofleet',
          // The training job's own `job` label must win over the scrape job's name.
          honor_labels: true,
          metrics_path: '/metrics',
          file_sd_configs: [{ files: ['/tmp/p/targets.json'], refresh_interval: '5s' }],
        },
      ],
    });
    expect((JSON.parse(prometheusConfig({ targetsFile: 't' })) as { rule_files: string[] }).rule_files[0]).toMatch(/deploy\/prometheus\/rules\.yaml$/);
  });

  it('writes one target group per process, labelled with its component, in a stable order', () => {
    const text = fileSdTargets([
      { address: '127.0.0.1:9300', component: 'worker', labels: { worker_id: 'local-1' } },
      { address: '127.0.0.1:9100', component: 'coordinator' },
    ]);
    expect(JSON.parse(text)).toEqual([
      { targets: ['127.0.0.1:9100'], labels: { component: 'coordinator' } },
      { targets: ['127.0.0.1:9300'], labels: { component: 'worker', worker_id: 'local-1' } },
    ]);
  });

  it('says how to install prometheus when it is missing', () => {
    // An empty PATH and an override that does not exist; /usr/bin may have it on this machine.
    const env = { PATH: '', DINOFLEET_PROMETHEUS: '/nonexistent/prometheus' };
    try {
      expect(findPrometheus(env)).toBe('/usr/bin/prometheus');
    } catch (error) {
      expect(error).toBeInstanceOf(PrometheusNotInstalledError);
      expect((error as Error).message).toContain('scripts/ensure-prometheus.sh');
    }
  });
});
