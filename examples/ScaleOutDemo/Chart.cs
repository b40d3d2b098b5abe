using ScottPlot;
using SkiaSharp;

namespace ScaleOutDemo;

/// <summary>Calls per second per pod over time, one panel per strategy, events marked; client failures in red.</summary>
internal static class Chart
{
    private const int Width = 1400;
    private const int PanelHeight = 330;

    public static void Save(IReadOnlyList<StrategyResult> results, string path)
    {
        using var surface = SKSurface.Create(new SKImageInfo(Width, PanelHeight * results.Count)) ?? throw new InvalidOperationException("Could not create a drawing surface.");
        surface.Canvas.Clear(SKColors.White);
        var maxSeconds = results.Max(r => Math.Floor(r.LoadEndedAtSeconds));
        var maxRate = results.SelectMany(r => r.Pods.SelectMany(p => p.CallsPerSecond).Concat(r.ClientFailedPerSecond)).DefaultIfEmpty(1).Max();
        for (var i = 0; i < results.Count; i++)
        {
            using var plot = Panel(results[i], maxSeconds, maxRate * 1.15);
            using var panel = SKBitmap.Decode(plot.GetImageBytes(Width, PanelHeight, ImageFormat.Png));
            surface.Canvas.DrawBitmap(panel, 0, PanelHeight * i);
        }

        using var image = surface.Snapshot();
        using var data = image.Encode(SKEncodedImageFormat.Png, 100);
        using var file = File.Create(path);
        data.SaveTo(file);
    }

    private static string Short(string? pod) => pod?.Replace("greeter-", "p", StringComparison.Ordinal) ?? "";

    private static Plot Panel(StrategyResult result, double maxSeconds, double maxRate)
    {
        var plot = new Plot();
        var palette = new ScottPlot.Palettes.Category20();
        for (var i = 0; i < result.Pods.Length; i++)
        {
            var pod = result.Pods[i];
            var first = (int)Math.Floor(pod.AddedAtSeconds);
            // Whole seconds only: the partial last second of the load would look like a collapse.
            var end = (int)Math.Floor(result.LoadEndedAtSeconds);
            var last = Math.Min(end, (int)Math.Ceiling(pod.RemovedAtSeconds ?? end));
            var xs = new List<double>();
            var ys = new List<double>();
            for (var s = first; s < Math.Max(last, first + 1); s++)
            {
                xs.Add(s + 0.5);
                ys.Add(s < pod.CallsPerSecond.Length ? pod.CallsPerSecond[s] : 0);
            }

            var line = plot.Add.ScatterLine(xs.ToArray(), ys.ToArray(), palette.GetColor(i));
            line.LineWidth = 2;
            line.LegendText = Short(pod.Name);
        }

        if (result.ClientFailedPerSecond.Any(f => f > 0))
        {
            var failures = result.ClientFailedPerSecond.Take((int)Math.Floor(result.LoadEndedAtSeconds)).ToArray();
            var failed = plot.Add.ScatterLine(
                failures.Select((_, s) => s + 0.5).ToArray(),
                failures.Select(f => (double)f).ToArray(),
                Colors.Red);
            failed.LineWidth = 3;
            failed.LinePattern = LinePattern.Dotted;
            failed.LegendText = "failed calls (client)";
        }

        foreach (var e in result.Events.Where(e => e.Kind is "Scaled" or "RollingUpdateStarted" or "RollingUpdateCompleted" or "PodBlackHoled" or "PodReadinessChanged"))
        {
            var marker = plot.Add.VerticalLine(e.AtSeconds, 1.5f, Colors.Black.WithAlpha(0.6), LinePattern.Dashed);
            marker.Text = e.Kind switch
            {
                "Scaled" => e.Description.Replace("scale ", "", StringComparison.Ordinal),
                "RollingUpdateStarted" => "rolling",
                "RollingUpdateCompleted" => "rolled",
                "PodBlackHoled" => $"{Short(e.Pod)} black-holed",
                _ => $"{Short(e.Pod)} removed",
            };
            marker.LabelFontSize = 11;
            marker.LabelOppositeAxis = e.Kind is "RollingUpdateCompleted" or "PodReadinessChanged";
        }

        plot.Title($"{result.Name}: {result.Description}  —  {result.CallsPerSecond:0} calls/s, {result.FailedCalls} failed, new pods' share after scale-out {result.NewPodShareAfterScaleOut:P0}", size: 13);
        plot.YLabel("calls/s per pod");
        plot.XLabel("seconds");
        plot.Axes.SetLimits(0, maxSeconds, 0, maxRate);
        plot.ShowLegend(Alignment.UpperLeft, Orientation.Horizontal);
        plot.Legend.FontSize = 9;
        return plot;
    }
}
